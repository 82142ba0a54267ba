"use strict";
// The Learning page; `remembrall report` inlines this script with the data in window.REMEMBRALL_LEARNING.
const COLORS = ["#2f6fde", "#d0342c", "#1f9d55", "#d98b00", "#8e44ad", "#16a2b8", "#7f8c8d", "#c2185b"];
const charts = {};
function align(series) {
  // series: [{label, points: [[t, y], ...]}] -> uPlot data with one shared, sorted x axis
  const xs = [...new Set(series.flatMap(s => s.points.map(p => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map(s => { const y = new Array(xs.length).fill(null); for (const [t, v] of s.points) y[index.get(t)] = v; return y; });
  return [xs, ...ys];
}
function chart(id, series, yLabel, opts) {
  const root = document.getElementById(id);
  if (!series.length || !series.some(s => s.points.length)) {
    root.replaceChildren(RB.el("div", { class: "muted", text: opts.empty }));
    delete charts[id];
    return;
  }
  const data = align(series);
  const key = series.map(s => s.label).join("|");
  if (charts[id] && charts[id].key === key) { charts[id].plot.setData(data); return; }
  root.replaceChildren();
  const plot = new uPlot({
    width: Math.max(320, root.clientWidth - 16), height: 240,
    scales: { x: { time: true }, y: opts.y || {} },
    axes: [{}, { label: yLabel }],
    series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
                                             paths: opts.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined }))],
  }, data, root);
  charts[id] = { plot: plot, key: key };
}
function card(k, v) { return RB.el("div", { class: "card" }, RB.el("div", { class: "k", text: k }), RB.el("div", { class: "v", text: String(v) })); }
function render(d) {
  const stops = Object.entries(d.stop_reasons).map(([k, v]) => k + " " + v).join(", ");
  document.getElementById("learn-cards").replaceChildren(
    card("predictions", d.predictions), card("labels used", d.labels_used),
    card("retraining runs", d.runs_accepted + " / " + d.runs_total + " accepted"),
    card("retraining compute", d.retrain_compute_s.toFixed(1) + " s"),
    card("model swaps", d.swaps.length), card("drift · recalls · rollbacks",
      ["drift", "recall", "rollback"].map(k => d.marks.filter(m => m.event === k).length).join(" · ")));
  const acc = [];
  for (const [s, pts] of Object.entries(d.accuracy)) acc.push({ label: s + " (every labelled prediction)", points: pts });
  for (const [s, pts] of Object.entries(d.labelled_accuracy)) acc.push({ label: s + " (samples sent for labels)", points: pts });
  chart("chart-accuracy", acc, "accuracy", { y: { range: [0, 1] }, empty: "No labels yet: accuracy needs a stream that carries labels, or labelled samples." });
  const byModality = {};
  for (const s of d.swaps) if (s.role !== "base") (byModality[s.modality] = byModality[s.modality] || []).push([s.ts, s.version]);
  chart("chart-versions", Object.entries(byModality).map(([m, pts]) => ({ label: m + " model version", points: pts })),
        "version", { stepped: true, empty: "No retrained model has been swapped in yet." });
  const classes = Object.entries(d.labels_per_class);
  const most = Math.max(1, ...classes.map(([, n]) => n));
  document.getElementById("classes").replaceChildren(...(classes.length ? classes.map(([name, n]) => {
    const fill = RB.el("div", { class: "fill" }); fill.style.width = Math.round(300 * n / most) + "px";
    return RB.el("div", { class: "bar" }, RB.el("span", { class: "name", text: name, title: name }), fill, RB.el("span", { class: "muted", text: String(n) }));
  }) : [RB.el("div", { class: "muted", text: "No labels yet." })]));
  RB.rows("#runs", d.runs.slice().reverse().slice(0, 200).map(r => [RB.time(r.ended), r.modality, r.version === null ? "–" : "v" + r.version,
    r.accepted ? "yes" : "no", r.stop_reason + (r.consolidation ? " (sleep)" : ""), r.steps,
    r.compute_s === null ? "–" : Number(r.compute_s).toFixed(2), RB.pct(r.val_accuracy), r.labels]));
  RB.rows("#marks", d.marks.slice().reverse().slice(0, 200).map(m => [RB.time(m.ts), m.event, m.modality,
    m.event === "drift" ? "drift " + m.drift : (m.event === "rollback" ? "v" + m.from_version + " → v" + m.version : "v" + m.version)]));
}
if (window.REMEMBRALL_LEARNING) render(window.REMEMBRALL_LEARNING);
else RB.every(5000, async () => render(await RB.get("/api/learning")));
