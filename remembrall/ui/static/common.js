// Shared by every page: JSON in and out, the token, small formatting helpers. No framework, no build.
"use strict";
const RB = {
  token() { return sessionStorage.getItem("remembrall-token"); },
  headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const t = RB.token();
    if (t) h["Authorization"] = "Bearer " + t;
    return h;
  },
  async get(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    RB.pulse(true);
    return r.json();
  },
  async post(path, body) {
    const r = await fetch(path, { method: "POST", credentials: "same-origin", headers: RB.headers(body !== undefined),
                                  body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || (r.status + " " + r.statusText));
    return data;
  },
  pulse(ok) {
    const el = document.getElementById("pulse");
    if (el) el.textContent = ok ? "live · " + new Date().toLocaleTimeString() : "pipeline unreachable";
  },
  el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  },
  rows(table, rows) {
    const body = document.querySelector(table + " tbody");
    body.replaceChildren(...rows.map(cells => RB.el("tr", {}, ...cells.map(c =>
      c instanceof Node ? RB.el("td", {}, c) : RB.el("td", { text: c === null || c === undefined ? "–" : String(c) })))));
  },
  pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"; },
  time(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : "–"; },
  tokenBanner(authorized) {
    const b = document.getElementById("token-banner");
    if (!b) return;
    if (authorized || RB.token()) { b.classList.add("hidden"); return; }
    b.replaceChildren("Read-only: labels and control need the UI token. Open the URL the pipeline printed at start-up, or paste the token from OUT/ui-token: ",
      RB.el("input", { type: "password", id: "token-input", placeholder: "token" }), " ",
      RB.el("button", { id: "token-save" }, "Use token"));
    b.classList.remove("hidden");
    document.getElementById("token-save").onclick = () => {
      sessionStorage.setItem("remembrall-token", document.getElementById("token-input").value.trim());
      b.classList.add("hidden");
    };
  },
  every(ms, fn) {
    const run = async () => { try { await fn(); } catch (e) { RB.pulse(false); console.warn(e); } };
    run();
    return setInterval(run, ms);
  },
};
