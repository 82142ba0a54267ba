"use strict";
function card(k, v) { return RB.el("div", { class: "card" }, RB.el("div", { class: "k", text: k }), RB.el("div", { class: "v", text: v })); }
async function refresh() {
  const d = await RB.get("/api/overview");
  RB.tokenBanner(d.authorized);
  const up = d.pipeline.started ? Math.round(Date.now() / 1000 - d.pipeline.started) : null;
  const serving = Object.entries(d.serving || {}).map(([m, s]) => m + " v" + s.version).join(", ");
  document.getElementById("cards").replaceChildren(
    card("pipeline", d.pipeline.stopping ? "draining" : (d.pipeline.pid ? "running" : "starting")),
    card("uptime", up === null ? "–" : (up >= 3600 ? Math.floor(up / 3600) + " h " : "") + Math.floor((up % 3600) / 60) + " min"),
    card("model serving", serving || ("v" + d.model_version)),
    card("labels used", d.labels_used),
    card("retraining runs", d.retrain_runs),
    card("retraining share", RB.pct(d.retrain_share)),
    card("memory items", d.memory_items),
    card("zoo specialists", d.zoo_specialists));
  RB.rows("#streams", d.streams.map(s => [s.id, s.modality, s.state, s.fps_in.toFixed(1), s.fps_out.toFixed(1), s.drops, s.labels, RB.pct(s.online_accuracy)]));
  RB.rows("#stages", d.stages.map(s => [s.name, s.type, RB.el("span", { class: "state-" + s.state, text: s.state }), s.restarts, s.fps.toFixed(1), s.drops, s.queue, s.streams.join(", ")]));
  const links = [];
  if (d.pipeline.metrics_url) links.push(RB.el("a", { href: d.pipeline.metrics_url + "/metrics" }, "Prometheus metrics"));
  if (d.grafana_url) links.push(RB.el("a", { href: d.grafana_url }, "Grafana dashboard"));
  const el = document.getElementById("links");
  el.replaceChildren(...links.flatMap((a, i) => i ? [" · ", a] : [a]));
}
for (const verb of ["rollback", "sleep"]) {
  document.getElementById(verb).onclick = async () => {
    const out = document.getElementById("control-result");
    try { await RB.post("/api/control/" + verb, {}); out.textContent = verb + " sent"; }
    catch (e) { out.textContent = e.message; }
  };
}
RB.every(2000, refresh);
