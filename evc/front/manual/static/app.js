// The page of front/manual: it uses only the API under /api/v1/ (docs/front-manual.md) and its live stream.
"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const PH = ["L1", "L2", "L3"];
const COLORS = ["#3c7dd9", "#d9822b", "#5a9e4b"];
let login = null, site = null, stream = null, readers = [];
const history = [];            // grid meter samples: [time ms, [A L1, A L2, A L3]]

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}
const fmt = (v, unit, digits = 1) => (v === null || v === undefined) ? "–" : `${Number(v).toFixed(digits)} ${unit}`;
function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? `${h} h ${m} min` : `${m} min ${s % 60} s`;
}
function toast(text) {
  const t = $("#toast"); t.textContent = text; t.classList.add("show");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => t.classList.remove("show"), 4000);
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && login) headers["X-CSRF-Token"] = login.csrf_token;
  const r = await fetch("/api/v1/" + path, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401 && path !== "login") { showLogin(); throw new Error("log in again"); }
  const text = await r.text();
  const doc = text && (r.headers.get("Content-Type") || "").startsWith("application/json") ? JSON.parse(text) : null;
  if (!r.ok) throw new Error(doc && doc.error ? doc.error : `HTTP ${r.status}`);
  return doc;
}

function showLogin() {
  if (stream) { stream.close(); stream = null; }
  login = null;
  $("#app").hidden = true; $("#login").hidden = false; $("#logout").hidden = true; $("#who").textContent = "";
  setLive(false);
}
function setLive(on) { const b = $("#live"); b.textContent = on ? "live" : "offline"; b.className = "badge " + (on ? "on" : "off"); }

async function start() {
  try { login = await (await fetch("/api/v1/session", { credentials: "same-origin" })).json(); }
  catch (e) { login = null; }
  if (!login || !login.csrf_token) return showLogin();
  $("#login").hidden = true; $("#app").hidden = false;
  $("#who").textContent = login.user ? `${login.user} (${login.role})` : "";
  $("#logout").hidden = !login.user;
  document.body.classList.toggle("viewer", login.role !== "operator");
  connect();
  loadTokens();
}

function connect() {
  if (stream) stream.close();
  stream = new EventSource("/api/v1/events");
  stream.onopen = () => setLive(true);
  stream.onerror = () => { setLive(false); checkLogin(); };
  stream.addEventListener("site", e => { site = JSON.parse(e.data); renderAll(); loadReaders(); });
  stream.addEventListener("reader", e => {
    const r = JSON.parse(e.data);
    const i = readers.findIndex(x => x.name === r.name);
    if (r.removed) { if (i >= 0) readers.splice(i, 1); } else if (i >= 0) readers[i] = r; else readers.push(r);
    readers.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    renderReaders();
  });
  stream.addEventListener("charger", e => {
    const c = JSON.parse(e.data); if (!site) return;
    const i = site.chargers.findIndex(x => x.name === c.name);
    if (c.removed) { if (i >= 0) site.chargers.splice(i, 1); }
    else if (i >= 0) site.chargers[i] = c; else site.chargers.push(c);
    renderChargers();
  });
  stream.addEventListener("meter", e => {
    const m = JSON.parse(e.data); if (!site) return;
    const i = site.meters.findIndex(x => x.name === m.name);
    if (m.removed) { if (i >= 0) site.meters.splice(i, 1); } else if (i >= 0) site.meters[i] = m; else site.meters.push(m);
    renderGrid();
  });
  stream.addEventListener("control", e => { if (site) { site.control = JSON.parse(e.data); renderGrid(); } });
  stream.addEventListener("error", e => {
    if (!e.data || !site) return;            // also the EventSource's own "error" (connection) event
    const x = JSON.parse(e.data);
    site.errors = site.errors.filter(y => y.key !== x.key);
    if (x.error) site.errors.push(x);
    renderErrors();
  });
  stream.addEventListener("session", () => loadHistory());
}
async function checkLogin() {
  const r = await fetch("/api/v1/session", { credentials: "same-origin" }).catch(() => null);
  if (r && r.status === 401) showLogin();
}

function renderAll() {
  $("#site-name").textContent = site.name;
  const sel = $("#history-charger"), was = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "all chargers"),
    ...site.chargers.map(c => el("option", { value: c.name }, c.name)));
  sel.value = was;
  renderErrors(); renderGrid(); renderChargers(); loadHistory();
}

function renderErrors() {
  $("#errors-box").hidden = !site.errors.length;
  $("#errors").replaceChildren(...site.errors.map(e => el("li", {}, el("b", {}, e.key + ": "), e.error)));
}

function bar(value, max, mark) {
  const b = el("div", { class: "bar" }), f = el("div", { class: "fill" });
  const top = Math.max(max || 0, value || 0, mark || 0, 1);
  f.style.width = `${Math.min(100, 100 * (value || 0) / top)}%`;
  b.append(f);
  if (mark !== null && mark !== undefined) { const m = el("div", { class: "mark" }); m.style.left = `${100 * mark / top}%`; b.append(m); }
  if (max && value > max) b.classList.add("over");
  return b;
}

function gridMeter() {
  if (!site) return null;
  const name = site.control && site.control.meter;
  return site.meters.find(m => m.name === name) || null;
}

function renderGrid() {
  const m = gridMeter(), ctl = site.control || {};
  $("#grid-meter").textContent = m ? `meter ${m.name}${m.stale ? " (stale)" : ""}` : "no grid meter";
  const box = $("#grid-phases"); box.replaceChildren();
  PH.forEach((p, i) => {
    const a = m ? m.A[i] : null, lim = ctl.A_max ? ctl.A_max[i] : null;
    box.append(el("span", {}, p), bar(a, lim, lim), el("span", { class: "grid-value", "data-phase": p },
      `${fmt(a, "A")} / ${fmt(lim, "A", 0)}`));
  });
  $("#control-line").textContent = ctl.name ? `control ${ctl.name}: ${ctl.mode || "–"}; headroom ` +
    ctl.headroom_A.map(v => fmt(v, "A")).join(" · ") : "";
  if (m && m.A.some(v => v !== null)) {
    const now = Date.now();
    if (!history.length || now - history[history.length - 1][0] > 400) history.push([now, m.A.slice()]);
    while (history.length && now - history[0][0] > 300000) history.shift();
  }
  drawChart(ctl.A_max || []);
}

function drawChart(limits) {
  const c = $("#chart"), g = c.getContext("2d"), w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  const values = history.flatMap(x => x[1]).concat(limits).filter(v => v !== null && v !== undefined);
  const top = Math.max(1, ...values) * 1.15, now = Date.now();
  const span = Math.max(60000, history.length ? now - history[0][0] : 0);   // up to the last 5 minutes
  const x = t => w - (now - t) / span * w, y = v => h - v / top * h;
  g.strokeStyle = "#b3261e"; g.setLineDash([4, 4]);
  limits.forEach(l => { if (l !== null) { g.beginPath(); g.moveTo(0, y(l)); g.lineTo(w, y(l)); g.stroke(); } });
  g.setLineDash([]);
  PH.forEach((p, i) => {
    g.strokeStyle = COLORS[i]; g.beginPath();
    history.forEach(([t, a], k) => { if (a[i] === null) return; k ? g.lineTo(x(t), y(a[i])) : g.moveTo(x(t), y(a[i])); });
    g.stroke();
  });
}

function renderChargers() {
  // A card whose mode menu is open (focused) is left as it is until it closes: re-rendering would close it.
  const box = $("#chargers"), busy = document.activeElement && document.activeElement.closest(".card");
  box.replaceChildren(...site.chargers.map(c => busy && busy.id === `charger-${c.name}` ? busy : card(c)));
  if (busy && busy.isConnected && busy.querySelector("select")) busy.querySelector("select").focus();
}

function card(c) {
  const s = c.session;
  const phases = el("div", { class: "phases" });
  PH.forEach((p, i) => phases.append(el("span", {}, p), bar(c.current_A[i], c.setpoint_A, c.setpoint_A),
    el("span", {}, fmt(c.current_A[i], "A"))));
  const mode = el("select", { class: "mode operator", "aria-label": "mode",
    onchange: ev => { ev.target.blur(); setMode(c.name, ev.target.value); } },
    ...["OFF", "ON"].concat(c.mode && !["OFF", "ON"].includes(c.mode) ? [c.mode] : [])
      .map(m => el("option", { value: m }, m)));
  mode.value = c.mode;
  const authorized = s && ["authorized", "charging", "suspended"].includes(s.state);
  return el("div", { class: "card", id: `charger-${c.name}`, "data-status": c.status },
    el("h3", {}, c.name, el("span", { class: `status ${c.status}` }, c.status)),
    el("div", { class: "muted" }, `${c.type || "?"} · ${c.phases} phase${c.phases === 1 ? "" : "s"} · mode `,
      el("b", { class: "mode-text" }, c.mode || "–")),
    el("div", { class: "row" }, "setpoint ", el("b", { class: "setpoint" }, fmt(c.setpoint_A, "A")),
      c.reason ? el("span", { class: "muted reason" }, `(${c.reason})`) : ""),
    phases,
    el("div", { class: "row session" }, s ? `session ${s.state}: ${fmt(s.energy_Wh / 1000, "kWh", 2)}, ` +
      `${duration(s.duration_s)}${s.id_tag ? ", card " + s.id_tag : ""}` : "no car"),
    c.error ? el("div", { class: "error" }, c.error) : "",
    el("div", { class: "row operator" }, "mode ", mode,
      authorized ? el("button", { class: "stop", onclick: () => command(c.name, "stop") }, "Stop")
        : el("button", { class: "start", onclick: () => command(c.name, "start") }, "Start")));
}

// -- card readers (reader/*): the newest card and its answer, live; "present a card" when the front allows it --

const REFUSED = ["Blocked", "Expired", "Invalid", "ConcurrentTx", "Failed"];
async function loadReaders() {
  try { readers = await api("GET", "readers"); } catch (e) { return; }
  renderReaders();
}
function cardText(card) {
  if (!card) return "no card yet";
  const when = card.time ? new Date(card.time).toLocaleTimeString() : "";
  return `${card.id_tag || "?"}: ${card.answer || "?"}${card.charger ? " at " + card.charger : ""}` +
    (when ? ` (${when})` : "");
}
function readerInfo(r) {
  const card = r.last_card, answer = card ? card.answer : null;
  const cls = !answer ? "" : REFUSED.includes(answer) ? "refused" : "accepted";
  return [
    el("h3", {}, r.name, el("span", { class: `status link-${r.link || "none"}` }, r.link ? `link ${r.link}` : "–")),
    el("div", { class: "muted" }, `${r.type || "?"} · for `,
      el("b", { class: "reader-chargers" }, r.chargers === "*" ? "every charger" : r.chargers.join(", ") || "–")),
    el("div", { class: "row" }, "last card ", el("b", { class: `last-card ${cls}`, "data-answer": answer || "" },
      cardText(card))),
    r.held ? el("div", { class: "row muted held" }, `held for the next car: ${r.held.id_tag}` +
      (r.held.until ? ` until ${new Date(r.held.until).toLocaleTimeString()}` : "")) : "",
    r.error ? el("div", { class: "error" }, r.error) : "",
  ];
}
function presentForm(r) {
  const input = el("input", { class: "present-uid", placeholder: "UID, e.g. 1C78F2BF", maxlength: "64",
    required: "", "aria-label": `card UID to present at ${r.name}` });
  return el("form", { class: "row operator present",
    onsubmit: async ev => {
      ev.preventDefault();
      try {
        await api("POST", `readers/${encodeURIComponent(r.name)}/present`, { uid: input.value.trim() });
        toast(`${r.name}: card ${input.value.trim()} presented`); input.value = "";
      } catch (e) { toast(e.message); }
    } }, input, el("button", { type: "submit", class: "present-submit" }, "Present a card"));
}
function renderReaders() {
  // Each reader's card is updated in place: the "present a card" field keeps what is being typed into it.
  const box = $("#readers");
  $("#readers-box").hidden = !readers.length;
  const keep = new Set(readers.map(r => `reader-${r.name}`));
  for (const c of [...box.children]) if (!keep.has(c.id)) c.remove();
  readers.forEach((r, i) => {
    let c = document.getElementById(`reader-${r.name}`);
    if (!c) c = el("div", { class: "card reader", id: `reader-${r.name}` }, el("div", { class: "info" }));
    if (box.children[i] !== c) box.insertBefore(c, box.children[i] || null);
    c.querySelector(".info").replaceChildren(...readerInfo(r));
    const form = c.querySelector("form.present");
    if (site && site.present_cards && !form) c.append(presentForm(r));
    else if (!(site && site.present_cards) && form) form.remove();
  });
}

async function setMode(name, mode) {
  try { await api("PUT", `chargers/${encodeURIComponent(name)}/mode`, { mode }); toast(`${name}: mode ${mode}`); }
  catch (e) { toast(e.message); }
}
async function command(name, what) {
  try { await api("POST", `chargers/${encodeURIComponent(name)}/${what}`, {}); toast(`${name}: ${what} sent`); }
  catch (e) { toast(e.message); }
}

async function loadTokens() {
  let tokens;
  try { tokens = await api("GET", "tokens"); } catch (e) { return; }
  $("#tokens tbody").replaceChildren(...tokens.map(t => el("tr", { "data-token": t.id },
    el("td", {}, t.id), el("td", {}, t.owner || ""), el("td", { class: "token-status" }, t.status),
    el("td", {}, Array.isArray(t.chargers) ? t.chargers.join(", ") : "all"),
    el("td", { class: "operator" },
      el("button", { onclick: () => putToken({ ...t, status: t.status === "Blocked" ? "Accepted" : "Blocked" }) },
        t.status === "Blocked" ? "Unblock" : "Block"),
      " ", el("button", { onclick: () => deleteToken(t.id) }, "Delete")))));
}
async function putToken(t) {
  const body = {};
  for (const k of ["status", "expiry", "chargers", "owner", "parent_id_tag"]) if (t[k] !== null && t[k] !== undefined) body[k] = t[k];
  try { await api("PUT", `tokens/${encodeURIComponent(t.id)}`, body); $("#token-error").textContent = ""; }
  catch (e) { $("#token-error").textContent = e.message; throw e; }
  loadTokens();
}
async function deleteToken(id) {
  if (!confirm(`Delete ${id}?`)) return;
  try { await api("DELETE", `tokens/${encodeURIComponent(id)}`); } catch (e) { toast(e.message); }
  loadTokens();
}

async function loadHistory() {
  const who = $("#history-charger").value;
  const q = who ? `?charger=${encodeURIComponent(who)}` : "";
  $("#csv").href = "/api/v1/sessions.csv" + q;
  let rows;
  try { rows = await api("GET", "sessions" + (q ? q + "&" : "?") + "limit=20"); } catch (e) { return; }
  $("#history tbody").replaceChildren(...rows.map(r => el("tr", {},
    el("td", {}, (r.start_time || "").replace("T", " ").slice(0, 19)), el("td", {}, r.charger),
    el("td", {}, r.id_tag || ""), el("td", {}, fmt(r.energy_Wh === null ? null : r.energy_Wh / 1000, "kWh", 2)),
    el("td", {}, duration(r.duration_s)), el("td", {}, r.state + (r.reason ? ` (${r.reason})` : "")))));
}

$("#login-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  try {
    login = await api("POST", "login", { user: $("#login-user").value, password: $("#login-password").value });
    $("#login-password").value = ""; $("#login-error").textContent = "";
    start();
  } catch (e) { $("#login-error").textContent = e.message; }
});
$("#logout").addEventListener("click", async () => { try { await api("POST", "logout"); } catch (e) { } showLogin(); });
$("#token-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  const id = $("#token-id").value.trim(), owner = $("#token-owner").value.trim();
  try { await putToken({ id, status: "Accepted", owner: owner || null }); $("#token-id").value = ""; $("#token-owner").value = ""; }
  catch (e) { }
});
$("#history-charger").addEventListener("change", loadHistory);
setInterval(() => { if (site) drawChart((site.control || {}).A_max || []); }, 5000);   // the chart's time axis moves
start();
