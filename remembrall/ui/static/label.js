"use strict";
let state = { samples: [], classes: [], current: null, skipped: new Set() };
const $ = id => document.getElementById(id);
function say(text, error) { const r = $("label-result"); r.textContent = text; r.className = error ? "banner error" : "muted"; }
function choices(sample) {
  const names = [];
  for (const [name] of sample.top || []) if (!names.includes(name)) names.push(name);
  for (const c of state.classes) if (!names.includes(c)) names.push(c);
  return names;
}
function render() {
  const pending = state.samples.filter(s => !state.skipped.has(s.id));
  const s = pending.find(x => state.current && x.id === state.current) || pending[0] || null;
  state.current = s ? s.id : null;
  $("empty").classList.toggle("hidden", !!s);
  $("sample").classList.toggle("hidden", !s);
  $("queue").replaceChildren(...pending.filter(x => x.image).slice(0, 40).map(x => {
    const img = RB.el("img", { src: x.image, alt: x.id, title: x.id, class: x.id === state.current ? "current" : "" });
    img.onclick = () => { state.current = x.id; render(); };
    return img;
  }));
  if (!s) return;
  $("sample").dataset.id = s.id;
  const img = $("sample-image"), text = $("sample-text");
  img.classList.toggle("hidden", !s.image); if (s.image && img.getAttribute("src") !== s.image) img.src = s.image;
  text.classList.toggle("hidden", !s.text); text.textContent = s.text || "";
  const guess = (s.top || []).slice(0, 3).map(([n, p]) => n + " " + (100 * p).toFixed(0) + " %").join(", ");
  $("sample-meta").textContent = s.stream + " · frame " + s.seq + " · model v" + s.model_version + (guess ? " · guesses: " + guess : "");
  $("choices").replaceChildren(...choices(s).slice(0, 30).map((name, i) => {
    const b = RB.el("button", { class: i === 0 ? "primary choice" : "choice", "data-label": name },
                    ...(i < 9 ? [RB.el("span", { class: "key", text: String(i + 1) })] : []), name);
    b.onclick = () => give(name);
    return b;
  }));
}
async function give(label) {
  const id = state.current;
  if (!id || !label) return;
  try {
    const r = await RB.post("/api/labels", { id: id, label: label });
    say("labelled " + id + " as " + r.label + (r.undo_s > 0 ? " · undo within " + r.undo_s + " s" : ""));
    state.samples = state.samples.filter(s => s.id !== id);
    state.current = null;
    render();
    refresh();
  } catch (e) { say(e.message, true); }
}
async function refresh() {
  const d = await RB.get("/api/samples?limit=100");
  RB.tokenBanner(d.authorized);
  const off = $("label-disabled");
  off.classList.toggle("hidden", d.enabled);
  if (!d.enabled) off.textContent = "Labels come from the '" + d.labeler + "' labeler in this run. Start the pipeline with label.labeler: external (and learn: true) to label here.";
  state.samples = d.samples; state.classes = d.classes;
  $("queue-length").textContent = d.queue;
  $("labels-sent").textContent = d.sent;
  $("labels-pending").textContent = d.pending.length;
  render();
}
$("submit-new").onclick = () => give($("new-class").value.trim());
$("skip").onclick = () => { if (state.current) state.skipped.add(state.current); state.current = null; render(); };
$("undo").onclick = async () => {
  try { const r = await RB.post("/api/labels/undo"); say("undone: " + r.id + " (" + r.label + ")"); refresh(); }
  catch (e) { say(e.message, true); }
};
document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT") { if (e.key === "Enter" && e.target.id === "new-class") $("submit-new").click(); return; }
  const s = state.samples.find(x => x.id === state.current);
  if (!s) return;
  if (e.key >= "1" && e.key <= "9") { const n = choices(s)[Number(e.key) - 1]; if (n) give(n); }
  else if (e.key === "Enter") { const n = choices(s)[0]; if (n) give(n); }
  else if (e.key === "s" || e.key === "S") $("skip").click();
});
RB.every(2000, refresh);
