"use strict";
const tiles = {};
function tile(ev) {
  if (tiles[ev.stream]) return tiles[ev.stream];
  const t = { root: RB.el("div", { class: "live-tile", id: "live-" + ev.stream }) };
  t.cap = RB.el("div", { class: "cap" });
  t.pred = RB.el("div", { class: "pred" });
  t.meta = RB.el("div", { class: "meta" });
  if (ev.jpeg) { t.img = RB.el("img", { alt: "newest frame of " + ev.stream, class: "live-frame" }); t.root.append(t.img); }
  else { t.lines = RB.el("div", { class: "lines" }); t.root.append(t.lines); }
  t.cap.append(RB.el("div", { class: "meta", text: ev.stream }), t.pred, t.meta);
  t.root.append(t.cap);
  document.getElementById("live-grid").append(t.root);
  tiles[ev.stream] = t;
  return t;
}
function show(ev) {
  const t = tile(ev);
  const score = ev.score === null || ev.score === undefined ? "" : " · " + (100 * ev.score).toFixed(0) + " %";
  t.pred.textContent = (ev.pred === null ? "no model yet" : ev.pred) + score;
  t.root.dataset.seq = ev.seq;
  const label = ev.label === null || ev.label === undefined ? "" : " · truth " + ev.label;
  t.meta.textContent = "frame " + ev.seq + " · model v" + ev.model_version + label + " · " + RB.time(ev.ts);
  if (ev.jpeg && t.img) t.img.src = "data:image/jpeg;base64," + ev.jpeg;
  if (ev.text !== null && ev.text !== undefined && t.lines) {
    t.lines.prepend(RB.el("div", {}, RB.el("b", { text: (ev.pred || "?") + score + " " }), ev.text));
    while (t.lines.childElementCount > 30) t.lines.lastChild.remove();
  }
}
const status = document.getElementById("live-status");
const source = new EventSource("/api/live/events");
source.addEventListener("hello", e => { document.getElementById("live-fps").textContent = JSON.parse(e.data).live_fps; RB.pulse(true); status.classList.add("hidden"); });
source.onmessage = e => { RB.pulse(true); show(JSON.parse(e.data)); };
source.onerror = () => { RB.pulse(false); status.textContent = "Live view reconnecting (the pipeline may have stopped, or too many viewers)…"; status.classList.remove("hidden"); };
