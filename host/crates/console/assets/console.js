// The edr console's script. Every page is filled from the /api/v1 JSON API
// (the one the CLI uses); text goes in with textContent only, never as HTML.
// Signed commands are signed here, in the page, with the operator's command
// key (WebCrypto Ed25519); the key never leaves this page's memory.
"use strict";

const META = (n) => (document.querySelector(`meta[name="${n}"]`) || {}).content || "";
const CSRF = META("csrf-token");
const COMMAND_PUB = META("command-pub");
const B = document.body.dataset;
const RANK = { viewer: 0, responder: 1, admin: 2 };
const canRespond = () => RANK[B.role] >= RANK.responder;
const SEVERITIES = ["critical", "high", "medium", "low", "info"];
const SEV_COLOR = { critical: "#7b1fa2", high: "#c62828", medium: "#ef6c00", low: "#2e7d32", info: "#546e7a" };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const svg = (tag, attrs, ...children) => {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const $ = (sel) => document.querySelector(sel);

function showError(msg) {
  const box = $("#error");
  if (!box) return;
  box.textContent = msg;
  box.hidden = !msg;
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") {
    opts.headers["X-CSRF-Token"] = CSRF;
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body === undefined ? {} : body);
  }
  const r = await fetch(path, opts);
  let v = null;
  try { v = await r.json(); } catch (_) { v = null; }
  if (r.status === 401) { location.href = "/console/login"; throw new Error("logged out"); }
  if (!r.ok) throw new Error((v && v.error && v.error.message) || `${method} ${path}: HTTP ${r.status}`);
  return v;
}

const ago = (secs) => {
  if (!secs) return "never";
  const d = Math.max(0, Math.floor(Date.now() / 1000) - secs);
  if (d < 60) return `${d} s ago`;
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return `${Math.floor(d / 86400)} d ago`;
};
const nsTime = (ns) => new Date(Number(ns) / 1e6).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
const badge = (text) => el("span", { class: `badge ${text}` }, text);
const get = (o, path) => path.split(".").reduce((v, k) => (v && typeof v === "object" ? (k in v ? v[k] : undefined) : undefined), o);
const ecsGet = (ecs, path) => {
  // ECS documents may nest or use dotted keys.
  if (!ecs) return undefined;
  if (path in ecs) return ecs[path];
  const parts = path.split(".");
  for (let i = 1; i < parts.length; i++) {
    const head = parts.slice(0, i).join(".");
    if (ecs[head] && typeof ecs[head] === "object") {
      const v = ecsGet(ecs[head], parts.slice(i).join("."));
      if (v !== undefined) return v;
    }
  }
  return undefined;
};
// Host id -> name, from GET /api/v1/hosts (alerts carry only the id; their ECS may name the host).
const hostNames = {};
async function loadHostNames() {
  for (const h of (await api("GET", "/api/v1/hosts")).hosts) hostNames[h.host_id] = h.hostname;
}
const hostName = (a) => hostNames[a.host_id] || ecsGet(a.ecs, "host.hostname") || a.host_id;
const techniques = (a) => [].concat(ecsGet(a.ecs, "threat.technique.id") || []);
const incidentOf = (a) => ecsGet(a.ecs, "edr.incident.id");

// A table with sortable columns: cols = [{name, key(row) -> sort value, cell(row) -> node|text}].
function fillTable(table, cols, rows, opts = {}) {
  const thead = table.tHead || table.createTHead();
  const tbody = table.tBodies[0] || table.createTBody();
  let sortBy = table._sortBy, dir = table._dir || 1;
  thead.replaceChildren(el("tr", {}, cols.map((c, i) => el("th", {
    onclick: () => { table._dir = table._sortBy === i ? -dir : 1; table._sortBy = i; fillTable(table, cols, rows, opts); },
  }, c.name + (sortBy === i ? (dir > 0 ? " ▲" : " ▼") : "")))));
  let sorted = rows.slice();
  if (sortBy !== undefined && cols[sortBy].key) {
    const k = cols[sortBy].key;
    sorted.sort((a, b) => { const x = k(a), y = k(b); return (x < y ? -1 : x > y ? 1 : 0) * dir; });
  }
  const trs = [];
  for (const r of sorted) {
    if (opts.groupKey) {
      const g = opts.groupKey(r);
      if (g && g !== trs._last) trs.push(opts.groupRow(g, sorted.filter((x) => opts.groupKey(x) === g)));
      trs._last = g;
    }
    trs.push(el("tr", { "data-id": opts.rowId ? opts.rowId(r) : undefined }, cols.map((c) => el("td", { class: c.mono ? "mono" : c.cls }, c.cell(r)))));
  }
  if (!rows.length) trs.push(el("tr", {}, el("td", { colspan: cols.length }, opts.empty || "nothing here")));
  tbody.replaceChildren(...trs);
}

// ---- the command key and signing ------------------------------------------------------------

let commandKey = null; // { key: CryptoKey (not extractable), pub: hex }
const DOMAIN = "edr-fleet-command-v1\n";
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (s) => new Uint8Array(s.match(/../g).map((h) => parseInt(h, 16)));
const randomHex = (n) => hex(crypto.getRandomValues(new Uint8Array(n)));
const b64urlToHex = (s) => hex(Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0)));

// The CLI's key file (DIR/keys/command.ed25519) is the 32-byte Ed25519 seed in hex.
async function loadKey(text) {
  const seedHex = text.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(seedHex)) throw new Error("not a command key file: expected 64 hex digits (DIR/keys/command.ed25519)");
  if (!window.crypto || !crypto.subtle) throw new Error("this page is not a secure context (use https, or http://127.0.0.1 / localhost): WebCrypto is unavailable");
  // PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410).
  const pkcs8 = new Uint8Array([...unhex("302e020100300506032b657004220420"), ...unhex(seedHex)]);
  const tmp = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", tmp);
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  pkcs8.fill(0);
  commandKey = { key, pub: b64urlToHex(jwk.x) };
  return commandKey;
}

// The lowest body version an op needs (as fleet-proto's Command::min_version).
const V4_OPS = ["connections", "suspend", "resume", "block", "unblock", "storyline"];
const minVersion = (op) => (op === "status" || op === "ls" ? 1 : V4_OPS.includes(op) ? 4 : op.startsWith("pack_") ? 3 : 2);
const CHANGES_HOST = ["kill", "suspend", "resume", "quarantine", "restore", "delete", "block", "unblock", "fetch", "isolate", "release"];

// The CommandBody exactly as the CLI serializes it: v, command_id, host_id,
// issued_at, expires_at, nonce, command ({op, ...fields}), reason (left out when empty).
function commandBody(host, command, reason, ttlSecs = 300) {
  const now = Math.floor(Date.now() / 1000);
  const body = { v: minVersion(command.op), command_id: randomHex(8), host_id: host, issued_at: now, expires_at: now + ttlSecs, nonce: randomHex(16), command };
  if (reason) body.reason = reason;
  return JSON.stringify(body);
}

async function signCommand(host, command, reason) {
  if (!commandKey) throw new Error("no command key loaded: load your command key file (keys/command.ed25519) above first");
  const body = commandBody(host, command, reason);
  const msg = new TextEncoder().encode(DOMAIN + body);
  const sig = await crypto.subtle.sign({ name: "Ed25519" }, commandKey.key, msg);
  return { body, key: commandKey.pub, signature: hex(sig) };
}

// Loads the key file chosen in `input`, says so in `status`, and tells the page (event "edr-key").
async function loadKeyFile(input, status) {
  try {
    const text = await input.files[0].text();
    const k = await loadKey(text);
    input.value = "";
    const match = k.pub === COMMAND_PUB;
    status.className = match ? "ok" : "error";
    status.textContent = match
      ? `Command key loaded (${k.pub.slice(0, 16)}…), the fleet's key: hosts will accept what this page signs.`
      : `Key ${k.pub.slice(0, 16)}… is not the fleet's command key (${COMMAND_PUB.slice(0, 16)}…): hosts will refuse what it signs.`;
    const shared = $("#key-status");
    if (shared && shared !== status) { shared.className = status.className; shared.textContent = status.textContent; }
    document.dispatchEvent(new Event("edr-key"));
    return match;
  } catch (e) {
    status.className = "error";
    status.textContent = `Cannot load the key: ${e.message}`;
    return false;
  }
}

function keyPanel(container) {
  const status = el("span", { id: "key-status", class: "notice" }, "No command key loaded: signed commands (respond, live view, hunts) need your key file. It stays in this page's memory and is never uploaded.");
  const input = el("input", { type: "file", id: "key-file", accept: ".ed25519,.key,text/plain" });
  input.addEventListener("change", () => loadKeyFile(input, status));
  container.replaceChildren(el("div", { class: "panel" }, el("label", { class: "inline" }, "Command key file ", input), status));
}

// ---- respond and live view -------------------------------------------------------------------

const ACTIONS = {
  kill: { label: "Kill process", arg: "pid", build: (a, o) => ({ op: "kill", pid: Number(a), tree: !!o.tree }) },
  suspend: { label: "Suspend process", arg: "pid", build: (a) => ({ op: "suspend", pid: Number(a) }) },
  resume: { label: "Resume process", arg: "pid", build: (a) => ({ op: "resume", pid: Number(a) }) },
  quarantine: { label: "Quarantine file", arg: "path", build: (a) => ({ op: "quarantine", path: a }) },
  restore: { label: "Restore from quarantine", arg: "quarantine id or original path", build: (a, o) => ({ op: "restore", id: a, force: !!o.force }) },
  delete: { label: "Delete file", arg: "path", build: (a) => ({ op: "delete", path: a }) },
  block: { label: "Block execution", arg: "path or sha256", build: (a) => ({ op: "block", target: a }) },
  unblock: { label: "Unblock execution", arg: "path or sha256", build: (a) => ({ op: "unblock", target: a }) },
  fetch: { label: "Fetch file (≤ 512 KiB)", arg: "path", build: (a) => ({ op: "fetch", path: a }) },
  isolate: { label: "Isolate host", build: () => ({ op: "isolate" }) },
  release: { label: "Release host", build: () => ({ op: "release" }) },
};

async function sendCommand(host, command, reason) {
  const signed = await signCommand(host, command, reason);
  return api("POST", `/api/v1/hosts/${encodeURIComponent(host)}/commands`, signed);
}

function downloadBlob(name, data, type) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

async function offerFetched(result, out) {
  const o = result.output || {};
  const b64 = o.content_base64 || o.content || o.base64;
  if (typeof b64 !== "string") return;
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const sum = hex(await crypto.subtle.digest("SHA-256", bytes));
  const want = o.sha256 || (o.audit && o.audit.sha256);
  const okHash = !want || want === sum;
  const name = String(o.path || "evidence").split("/").pop() || "evidence";
  out.append(el("p", { class: okHash ? "ok" : "error" }, okHash ? `sha256 ${sum} checked. ` : `sha256 mismatch: got ${sum}, the host said ${want}. `,
    okHash ? el("button", { type: "button", onclick: () => downloadBlob(name, bytes, "application/octet-stream") }, `Download ${name}`) : null));
}

function respondPanel(container, host, defaults = {}) {
  const keyBox = el("div");
  keyPanel(keyBox);
  const action = el("select", { id: "action" }, Object.entries(ACTIONS).map(([k, a]) => el("option", { value: k }, a.label)));
  const arg = el("input", { id: "action-arg", type: "text", size: 40 });
  const tree = el("label", { class: "inline" }, el("input", { type: "checkbox", id: "action-tree" }), " with descendants");
  const force = el("label", { class: "inline" }, el("input", { type: "checkbox", id: "action-force" }), " replace a file there");
  const reason = el("input", { id: "action-reason", type: "text", size: 40, placeholder: "reason (required; kept in the audit)" });
  const go = el("button", { id: "action-go", type: "button", class: "danger" }, "Run…");
  const out = el("div", { id: "action-result" });
  const sync = () => {
    const a = ACTIONS[action.value];
    arg.hidden = !a.arg;
    arg.placeholder = a.arg || "";
    arg.value = (a.arg === "pid" ? defaults.pid : a.arg === "path" ? defaults.path : "") || "";
    tree.hidden = action.value !== "kill";
    force.hidden = action.value !== "restore";
  };
  action.addEventListener("change", sync);
  sync();
  go.addEventListener("click", async () => {
    out.replaceChildren();
    const a = ACTIONS[action.value];
    if (a.arg && !arg.value.trim()) return out.append(el("p", { class: "error" }, `give the ${a.arg}`));
    if (!reason.value.trim()) return out.append(el("p", { class: "error" }, "give a reason: it is signed with the command and kept in the audit"));
    if (!commandKey) return out.append(el("p", { class: "error" }, "no command key loaded: load your key file above (the server cannot sign for you)"));
    const cmd = a.build(arg.value.trim(), { tree: $("#action-tree").checked, force: $("#action-force").checked });
    if (["kill", "suspend", "resume"].includes(cmd.op) && !(Number.isInteger(cmd.pid) && cmd.pid > 0)) return out.append(el("p", { class: "error" }, "the pid must be a positive number"));
    const what = `${a.label}${a.arg ? " " + arg.value.trim() : ""} on host ${host}\nReason: ${reason.value.trim()}\n\nSign and send this command?`;
    if (!window.confirm(what)) return out.append(el("p", { class: "notice" }, "cancelled"));
    go.disabled = true;
    out.append(el("p", { class: "notice" }, "sent, waiting for the host…"));
    try {
      const r = await sendCommand(host, cmd, reason.value.trim());
      out.replaceChildren(el("p", { class: r.status === "done" ? "ok" : "error", id: "action-status" }, `${cmd.op}: ${r.status}${r.output && (r.output.error || r.output.reason) ? " — " + (r.output.error || r.output.reason) : ""}`),
        el("pre", {}, JSON.stringify(r.output, (k, v) => (k === "content_base64" && typeof v === "string" ? `(${v.length} base64 characters)` : v), 2)));
      if (cmd.op === "fetch" && r.status === "done") await offerFetched(r, out);
    } catch (e) {
      out.replaceChildren(el("p", { class: "error", id: "action-status" }, e.message));
    } finally {
      go.disabled = false;
    }
  });
  const disabled = !canRespond();
  if (disabled) [action, arg, reason, go].forEach((x) => (x.disabled = true));
  container.replaceChildren(
    disabled ? el("p", { class: "notice", id: "respond-disabled" }, `You are a ${B.role}: responding needs the responder role.`) : keyBox,
    el("div", { class: "panel toolbar" }, action, arg, tree, force, reason, go),
    out,
  );
}

function livePanel(container, host) {
  const out = el("div", { id: "live-result" });
  const path = el("input", { type: "text", id: "ls-path", value: "/tmp", size: 30 });
  const ps = el("button", { type: "button", id: "live-ps" }, "Process list");
  const ls = el("button", { type: "button", id: "live-ls" }, "List directory");
  const run = async (cmd, render) => {
    out.replaceChildren(el("p", { class: "notice" }, "waiting for the host…"));
    try {
      const r = await sendCommand(host, cmd, "");
      if (r.status !== "done") return out.replaceChildren(el("p", { class: "error" }, `${r.status}: ${r.output.error || r.output.reason || ""}`));
      out.replaceChildren(render(r.output));
    } catch (e) { out.replaceChildren(el("p", { class: "error" }, e.message)); }
  };
  ps.addEventListener("click", () => run({ op: "processes" }, (o) => {
    const t = el("table", { class: "grid" });
    const procs = o.processes || [];
    fillTable(t, [
      { name: "pid", key: (p) => p.pid, cell: (p) => p.pid },
      { name: "ppid", key: (p) => p.ppid, cell: (p) => p.ppid },
      { name: "user", key: (p) => p.user || "", cell: (p) => p.user || p.uid },
      { name: "exe", key: (p) => p.exe || p.name || "", cell: (p) => p.exe || (p.name ? `[${p.name}]` : ""), mono: true },
      { name: "argv", cell: (p) => [].concat(p.argv || []).join(" "), mono: true },
      { name: "lineage", cell: (p) => [].concat(p.lineage || []).join(" ← ") },
    ], procs);
    return el("div", {}, el("p", {}, `${procs.length} processes`), el("div", { class: "scroll" }, t));
  }));
  ls.addEventListener("click", () => run({ op: "ls", path: path.value.trim() }, (o) => {
    const t = el("table", { class: "grid" });
    fillTable(t, [
      { name: "name", key: (e) => e.name, cell: (e) => e.name, mono: true },
      { name: "type", key: (e) => e.type, cell: (e) => e.type },
      { name: "size", key: (e) => e.size, cell: (e) => e.size },
      { name: "mode", cell: (e) => e.mode },
      { name: "sha256", cell: (e) => e.sha256 || "", mono: true },
    ], o.entries || []);
    return t;
  }));
  if (!canRespond()) [ps, ls, path].forEach((x) => (x.disabled = true));
  container.replaceChildren(el("div", { class: "panel toolbar" }, ps, path, ls, el("span", { class: "hint" }, "signed read-only commands (responder role)")), out);
}

// The host's sockets (signed `connections`), filterable by any column.
function connectionsPanel(container, host) {
  const go = el("button", { type: "button", id: "live-conns" }, "Connections");
  const filter = el("input", { type: "search", id: "conn-filter", size: 30, placeholder: "filter: state, address, port, exe, pid…" });
  const proto = el("select", { id: "conn-proto" }, el("option", { value: "" }, "tcp and udp"), el("option", { value: "tcp" }, "tcp"), el("option", { value: "udp" }, "udp"));
  const out = el("div", { id: "conn-result" });
  const table = el("table", { class: "grid", id: "conn-table" });
  let rows = null, truncated = false;
  const text = (c) => [c.proto, c.state, c.local, c.remote, c.pid, c.exe, c.uid].map((x) => (x === null || x === undefined ? "" : String(x))).join(" ").toLowerCase();
  const render = () => {
    if (!rows) return;
    const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const shown = rows.filter((c) => (!proto.value || c.proto === proto.value) && words.every((w) => text(c).includes(w)));
    fillTable(table, [
      { name: "proto", key: (c) => c.proto, cell: (c) => c.proto },
      { name: "state", key: (c) => c.state, cell: (c) => c.state },
      { name: "local", key: (c) => c.local, cell: (c) => c.local, mono: true },
      { name: "remote", key: (c) => c.remote, cell: (c) => c.remote, mono: true },
      { name: "pid", key: (c) => c.pid || 0, cell: (c) => (c.pid === null || c.pid === undefined ? "" : c.pid) },
      { name: "uid", key: (c) => c.uid, cell: (c) => c.uid },
      { name: "exe", key: (c) => c.exe || "", cell: (c) => c.exe || "", mono: true },
    ], shown, { empty: "no socket matches" });
    $("#conn-count").textContent = `${shown.length} of ${rows.length} sockets${truncated ? " (the host cut the listing)" : ""}`;
  };
  go.addEventListener("click", async () => {
    out.replaceChildren(el("p", { class: "notice" }, "waiting for the host…"));
    try {
      const r = await sendCommand(host, { op: "connections" }, "");
      if (r.status !== "done") return out.replaceChildren(el("p", { class: "error", id: "conn-error" }, `connections: ${r.status}: ${(r.output && (r.output.error || r.output.reason)) || ""}`));
      rows = r.output.connections || [];
      truncated = r.output.truncated === true;
      out.replaceChildren(el("p", { id: "conn-count" }), el("div", { class: "scroll" }, table));
      render();
    } catch (e) { out.replaceChildren(el("p", { class: "error", id: "conn-error" }, e.message)); }
  });
  filter.addEventListener("input", render);
  proto.addEventListener("change", render);
  if (!canRespond()) [go, filter, proto].forEach((x) => (x.disabled = true));
  container.replaceChildren(el("div", { class: "panel toolbar" }, go, proto, filter, el("span", { class: "hint" }, "every TCP and UDP socket of the host, with its process (signed read-only command)")), out);
}

// ---- pages ------------------------------------------------------------------------------------

const openCount = (alerts, host) => alerts.filter((a) => a.host_id === host && a.state !== "closed").length;
const drops = (hb) => Object.values((hb && hb.drops) || {}).reduce((s, n) => s + n, 0);

// Events per second from the heartbeats' `events` counters (the agent pipeline's total since it started):
// the page keeps each host's heartbeats of the last minute and divides the counter's growth by their time span.
const EPS_WINDOW = 60;
function epsTracker() {
  const samples = {};
  return {
    add(h) {
      const hb = h.heartbeat;
      if (!hb || typeof hb.pipeline_events !== "number") return;
      const list = (samples[h.host_id] = samples[h.host_id] || []);
      const last = list[list.length - 1];
      if (last && hb.pipeline_events < last.events) list.length = 0; // the agent restarted: its counter began again
      if (!last || hb.time > last.time) list.push({ time: hb.time, events: hb.pipeline_events });
      while (list.length > 2 && list[list.length - 1].time - list[0].time > EPS_WINDOW) list.shift();
    },
    rate(h) {
      const list = samples[h.host_id] || [];
      if (!h.heartbeat || typeof h.heartbeat.pipeline_events !== "number") return { text: "n/a", title: "this host's heartbeat carries no event counter (an older agent)" };
      if (list.length < 2) return { text: "…", title: "measuring: needs two heartbeats" };
      const a = list[0], b = list[list.length - 1];
      const r = (b.events - a.events) / (b.time - a.time);
      return { value: r, text: `${r < 10 ? r.toFixed(1) : Math.round(r)}/s`, title: `${b.events - a.events} events in ${b.time - a.time} s (heartbeats), ${b.events} since the agent started` };
    },
  };
}

async function hostsPage() {
  let [{ hosts }, { alerts }] = await Promise.all([api("GET", "/api/v1/hosts"), api("GET", "/api/v1/alerts?limit=10000")]);
  const eps = epsTracker();
  hosts.forEach((h) => eps.add(h));
  const cols = [
    { name: "Host", key: (h) => h.hostname, cell: (h) => el("a", { href: `/console/hosts/${encodeURIComponent(h.host_id)}` }, h.hostname) },
    { name: "State", key: (h) => h.state, cell: (h) => badge(h.state) },
    { name: "Last seen", key: (h) => -(h.last_seen || 0), cell: (h) => ago(h.last_seen) },
    { name: "OS / kernel", key: (h) => get(h, "heartbeat.os") || "", cell: (h) => `${get(h, "heartbeat.os") || "?"} / ${get(h, "heartbeat.kernel") || "?"}` },
    { name: "Agent", key: (h) => get(h, "heartbeat.agent_version") || "", cell: (h) => get(h, "heartbeat.agent_version") || "" },
    { name: "Packs", cell: (h) => ((h.heartbeat && h.heartbeat.packs) || []).map((p) => `${p.id} ${p.version}`).join(", ") },
    { name: "Collectors", cell: (h) => ((h.heartbeat && h.heartbeat.collectors) || []).map((c) => `${c.name}: ${c.mode}`).join(", ") },
    { name: "Events/s", key: (h) => eps.rate(h).value || 0, cell: (h) => { const r = eps.rate(h); return el("span", { class: "eps", title: r.title, "data-eps": r.value === undefined ? "" : r.value.toFixed(2) }, r.text); } },
    { name: "Drops", key: (h) => drops(h.heartbeat), cell: (h) => drops(h.heartbeat) },
    { name: "Open alerts", key: (h) => openCount(alerts, h.host_id), cell: (h) => openCount(alerts, h.host_id) },
  ];
  const table = $("#hosts");
  const render = () => {
    const q = $("#filter").value.trim().toLowerCase(), st = $("#state-filter").value;
    const rows = hosts.filter((h) => (!st || h.state === st) && (!q || JSON.stringify([h.hostname, h.host_id, h.heartbeat]).toLowerCase().includes(q)));
    fillTable(table, cols, rows, { rowId: (h) => h.host_id, empty: "no hosts: enroll one with `edr fleet enroll-token` and `edr agent --enroll`" });
  };
  $("#filter").addEventListener("input", render);
  $("#state-filter").addEventListener("change", render);
  render();
  // Refreshed as often as the hosts beat (between 2 and 30 s), for the states and the rates.
  const every = Math.max(2, Math.min(30, ...hosts.map((h) => get(h, "heartbeat.interval_secs") || 30)));
  setInterval(async () => {
    try { hosts = (await api("GET", "/api/v1/hosts")).hosts; hosts.forEach((h) => eps.add(h)); render(); showError(""); }
    catch (e) { showError(`cannot refresh the hosts: ${e.message}`); }
  }, every * 1000);
}

function alertCols(withHost) {
  return [
    { name: "Time", key: (a) => -a.time, cell: (a) => nsTime(a.time) },
    withHost ? { name: "Host", cls: "nowrap", key: (a) => a.host_id, cell: (a) => el("a", { href: `/console/hosts/${encodeURIComponent(a.host_id)}`, title: a.host_id }, hostName(a)) } : null,
    { name: "Severity", key: (a) => SEVERITIES.indexOf(a.severity), cell: (a) => badge(a.severity) },
    { name: "Rule", key: (a) => a.rule_name, cell: (a) => el("a", { href: `/console/alerts/${encodeURIComponent(a.host_id)}/${a.alert_id}` }, a.rule_name) },
    { name: "ATT&CK", cell: (a) => techniques(a).join(", ") },
    { name: "Message", cell: (a) => ecsGet(a.ecs, "message") || "" },
    { name: "State", key: (a) => a.state, cell: (a) => el("span", {}, badge(a.state), a.state_by ? ` by ${a.state_by}` : "", a.note ? ` — ${a.note}` : "") },
  ].filter(Boolean);
}

async function hostPage() {
  const host = B.host;
  const [{ hosts }, { alerts }] = await Promise.all([api("GET", "/api/v1/hosts"), api("GET", `/api/v1/alerts?host=${encodeURIComponent(host)}&limit=200&ecs=true`)]);
  const h = hosts.find((x) => x.host_id === host);
  if (!h) throw new Error(`no host ${host} in this fleet`);
  const hb = h.heartbeat || {};
  const card = (k, v) => el("div", { class: "card" }, el("div", { class: "k" }, k), el("div", { class: "v" }, v));
  $("#host-name").textContent = `${h.hostname} (${h.host_id})`;
  $("#host-detail").replaceChildren(
    card("State", badge(h.state)), card("Last seen", ago(h.last_seen)), card("OS", hb.os || "?"), card("Kernel", hb.kernel || "?"),
    card("Agent", hb.agent_version || "?"), card("Packs", (hb.packs || []).map((p) => `${p.id} ${p.version}`).join(", ") || "none"),
    card("Collectors", (hb.collectors || []).map((c) => `${c.name}: ${c.mode}`).join(", ") || "?"),
    card("Drops", Object.entries(hb.drops || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "0"),
    card("Open alerts", openCount(alerts, host)),
  );
  respondPanel($("#respond"), host);
  livePanel($("#live"), host);
  connectionsPanel($("#connections"), host);
  fillTable($("#host-alerts"), alertCols(false), alerts, { empty: "no alerts from this host" });
}

function chartTimeline(alerts) {
  const W = 560, H = 150, pad = 28;
  const box = svg("svg", { viewBox: `0 0 ${W} ${H + 30}`, width: "100%", role: "img", "aria-label": "alerts over time by severity", id: "chart-time" });
  if (!alerts.length) { box.append(svg("text", { x: 10, y: 20 }, "no alerts yet")); return box; }
  const times = alerts.map((a) => Number(a.time) / 1e9);
  const lo = Math.min(...times), hi = Math.max(...times) + 1;
  const n = 24, step = (hi - lo) / n;
  const buckets = Array.from({ length: n }, () => ({}));
  for (const a of alerts) {
    const i = Math.min(n - 1, Math.floor((Number(a.time) / 1e9 - lo) / step));
    buckets[i][a.severity] = (buckets[i][a.severity] || 0) + 1;
  }
  const max = Math.max(1, ...buckets.map((b) => Object.values(b).reduce((s, x) => s + x, 0)));
  const bw = (W - pad) / n;
  buckets.forEach((b, i) => {
    let y = H;
    for (const s of SEVERITIES.slice().reverse()) {
      const c = b[s] || 0;
      if (!c) continue;
      const h = (c / max) * (H - 10);
      y -= h;
      box.append(svg("rect", { x: pad + i * bw + 1, y, width: bw - 2, height: h, fill: SEV_COLOR[s] || "#999" }, svg("title", {}, `${c} ${s}`)));
    }
  });
  box.append(svg("line", { x1: pad, y1: H, x2: W, y2: H, stroke: "#90a4ae" }));
  box.append(svg("text", { x: 0, y: 12 }, String(max)), svg("text", { x: 0, y: H }, "0"));
  const fmt = (t) => new Date(t * 1000).toISOString().slice(5, 16).replace("T", " ");
  box.append(svg("text", { x: pad, y: H + 14 }, fmt(lo)), svg("text", { x: W - 80, y: H + 14 }, fmt(hi)));
  let lx = pad;
  for (const s of SEVERITIES) {
    box.append(svg("rect", { x: lx, y: H + 20, width: 10, height: 10, fill: SEV_COLOR[s] }), svg("text", { x: lx + 13, y: H + 29 }, s));
    lx += 75;
  }
  return box;
}

function chartTop(title, id, counts) {
  const top = Object.entries(counts).sort((a, b) => b[1] - a[1]).slice(0, 6);
  const W = 360, row = 20;
  const box = svg("svg", { viewBox: `0 0 ${W} ${Math.max(1, top.length) * row + 4}`, width: "100%", role: "img", "aria-label": title, id });
  const max = Math.max(1, ...top.map((t) => t[1]));
  top.forEach(([name, c], i) => {
    const w = (c / max) * (W - 220);
    box.append(svg("rect", { x: 190, y: i * row + 4, width: Math.max(2, w), height: row - 6, fill: "#1f4e79" }),
      svg("text", { x: 0, y: i * row + 16 }, name.length > 28 ? name.slice(0, 27) + "…" : name), svg("text", { x: 196 + w, y: i * row + 16 }, String(c)));
  });
  if (!top.length) box.append(svg("text", { x: 0, y: 14 }, "none"));
  return box;
}

function renderCharts(alerts) {
  const count = (f) => alerts.reduce((m, a) => ((m[f(a)] = (m[f(a)] || 0) + 1), m), {});
  const card = (t, c) => el("div", { class: "card" }, el("div", { class: "k" }, t), c);
  $("#charts").replaceChildren(
    card("Alerts over time, by severity", chartTimeline(alerts)),
    card("Top rules", chartTop("top rules", "chart-rules", count((a) => a.rule_name))),
    card("Top hosts", chartTop("top hosts", "chart-hosts", count(hostName))),
  );
}

async function alertsPage() {
  let alerts = [];
  const selected = new Set();
  const key = (a) => `${a.host_id}:${a.alert_id}`;
  const table = $("#alerts");
  const filtered = () => {
    const v = (id) => $(id).value.trim().toLowerCase();
    const sev = v("#f-severity"), st = v("#f-state"), host = v("#f-host"), rule = v("#f-rule"), tech = v("#f-technique");
    return alerts.filter((a) => (!sev || a.severity === sev) && (!st || a.state === st)
      && (!host || `${a.host_id} ${hostName(a)}`.toLowerCase().includes(host))
      && (!rule || `${a.rule_id} ${a.rule_name}`.toLowerCase().includes(rule))
      && (!tech || techniques(a).some((t) => t.toLowerCase().includes(tech))));
  };
  const updateCount = () => { $("#selected-count").textContent = `${selected.size} selected`; };
  const check = (a) => {
    const c = el("input", { type: "checkbox", class: "pick", "data-key": key(a) });
    c.checked = selected.has(key(a));
    c.addEventListener("change", () => { c.checked ? selected.add(key(a)) : selected.delete(key(a)); updateCount(); });
    return c;
  };
  const cols = [{ name: "✓", cell: check }, ...alertCols(true)];
  // Alerts of one incident (edr.incident.id, one process tree) are grouped under one row, newest first.
  const order = (rows) => {
    const groups = new Map();
    for (const a of rows) { const g = incidentOf(a) ? `${a.host_id}/${incidentOf(a)}` : key(a); if (!groups.has(g)) groups.set(g, []); groups.get(g).push(a); }
    return [...groups.values()].flat();
  };
  const groupRow = (g, members) => el("tr", { class: "incident" }, el("td", { colspan: cols.length },
    `Incident ${g.split("/")[1]} on ${hostName(members[0])}: ${members.length} alert(s), highest ${members.map((a) => a.severity).sort((x, y) => SEVERITIES.indexOf(x) - SEVERITIES.indexOf(y))[0]}`,
    " ", el("button", { type: "button", onclick: () => { members.forEach((a) => selected.add(key(a))); render(); updateCount(); } }, "select all")));
  const render = () => fillTable(table, cols, order(filtered()), {
    rowId: key, empty: "no alerts match",
    groupKey: (a) => (incidentOf(a) ? `${a.host_id}/${incidentOf(a)}` : null), groupRow,
  });
  const load = async () => {
    await loadHostNames();
    alerts = (await api("GET", "/api/v1/alerts?limit=1000&ecs=true")).alerts;
    renderCharts(alerts);
    render();
  };
  const bulk = async (state) => {
    const note = $("#bulk-note").value;
    const res = $("#bulk-result");
    if (!selected.size) { res.textContent = "select alerts first"; return; }
    let ok = 0, failed = [];
    for (const k of selected) {
      const [host, id] = k.split(":");
      try { await api("POST", `/api/v1/alerts/${encodeURIComponent(host)}/${id}/triage`, { state, note }); ok++; } catch (e) { failed.push(`${k}: ${e.message}`); }
    }
    selected.clear();
    updateCount();
    res.textContent = `${ok} ${state}${failed.length ? `; failed: ${failed.join("; ")}` : ""}`;
    res.className = failed.length ? "error" : "ok";
    await load();
  };
  $("#bulk-ack").addEventListener("click", () => bulk("acknowledged"));
  $("#bulk-close").addEventListener("click", () => bulk("closed"));
  if (!canRespond()) ["#bulk-ack", "#bulk-close", "#bulk-note"].forEach((s) => ($(s).disabled = true));
  for (const id of ["#f-severity", "#f-state", "#f-host", "#f-rule", "#f-technique"]) $(id).addEventListener("input", render);
  await load();
}

function kv(rows) {
  return el("table", { class: "grid" }, el("tbody", {}, rows.filter((r) => r[1] !== undefined && r[1] !== "").map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))));
}

// ---- the storyline ---------------------------------------------------------------------------

// What one storyline event says, in a line (exec events are the process lines themselves).
function activityLine(ev) {
  const d = (ev.body && ev.body.data) || {};
  switch (ev.body && ev.body.kind) {
    case "file": return { cls: "file", text: `file ${d.op} ${d.path}${d.old_path ? ` (from ${d.old_path})` : ""}` };
    case "network": return { cls: "net", text: `${d.transport} ${d.op} ${d.local_ip}:${d.local_port} → ${d.remote_ip}:${d.remote_port}` };
    case "process-exit": return { cls: "exit", text: `exited with code ${d.exit_code}` };
    case "login": return { cls: "login", text: `login ${d.user} ${d.success ? "succeeded" : "failed"} via ${d.service}` };
    default: return null;
  }
}
const eventEntity = (ev) => { const d = (ev.body && ev.body.data) || {}; return d.entity_id === undefined || d.entity_id === null ? null : String(d.entity_id); };

// One process of the tree with its activity, then its children.
function storyNode(p, children, activity) {
  const exec = (p.execs || []).slice(-1)[0];
  const x = (exec && exec.body && exec.body.data) || {};
  const head = el("div", { class: "proc" }, badge(p.role), " ",
    el("span", { class: "mono" }, `${x.pid || "?"} ${x.exe || "(no exec in the record)"}`),
    x.argv && x.argv.length ? el("span", { class: "mono argv" }, " " + x.argv.join(" ")) : null,
    x.user ? el("span", { class: "hint" }, ` user ${x.user}`) : null,
    exec ? el("span", { class: "hint" }, ` ${nsTime(exec.time)}`) : el("span", { class: "hint" }, ` entity ${p.entity_id}`));
  const acts = (activity.get(String(p.entity_id)) || []).map((ev) => {
    const a = activityLine(ev);
    return a && el("li", { class: `act ${a.cls}` }, el("span", { class: "hint" }, nsTime(ev.time) + " "), a.text);
  }).filter(Boolean);
  const kids = (children.get(String(p.entity_id)) || []).map((c) => storyNode(c, children, activity));
  return el("li", { class: p.role === "trigger" ? "self" : p.role, "data-entity": String(p.entity_id) }, head,
    acts.length ? el("ul", { class: "acts" }, acts) : null, kids.length ? el("ul", {}, kids) : null);
}

function renderStory(story, host) {
  const procs = story.processes || [];
  const ids = new Set(procs.map((p) => String(p.entity_id)));
  const children = new Map(), roots = [];
  for (const p of procs) {
    const parent = p.parent_entity_id === null || p.parent_entity_id === undefined ? null : String(p.parent_entity_id);
    if (parent && ids.has(parent) && parent !== String(p.entity_id)) { if (!children.has(parent)) children.set(parent, []); children.get(parent).push(p); } else roots.push(p);
  }
  const activity = new Map();
  for (const e of story.events || []) {
    const k = eventEntity(e.event);
    if (k === null) continue;
    if (!activity.has(k)) activity.set(k, []);
    activity.get(k).push(e.event);
  }
  const n = (kind) => (story.events || []).filter((e) => e.event.body && e.event.body.kind === kind).length;
  const related = story.related_alerts || [], actions = story.actions || [];
  return el("div", { id: "storyline-tree" },
    el("p", { class: "ok", id: "storyline-status" }, `Storyline from the host's record: ${procs.length} process(es), ${n("file")} file and ${n("network")} network event(s).`),
    story.truncated || story.fitted_max_events ? el("p", { class: "notice" }, `The story was cut to fit${story.fitted_max_events ? ` (${story.fitted_max_events} events nearest the alert)` : ""}: ask for fewer ancestors' activity or a hunt for the rest.`) : null,
    procs.length ? el("div", { class: "tree" }, el("ul", {}, roots.map((r) => storyNode(r, children, activity)))) : el("p", { class: "notice" }, "The host's record has no process for this alert (it names none, or retention removed it)."),
    related.length ? el("div", {}, el("h3", {}, "Related alerts"), el("ul", { id: "storyline-related" }, related.map((r) => el("li", {}, badge(r.severity), " ", el("a", { href: `/console/alerts/${encodeURIComponent(host)}/${r.id}` }, r.rule_name), ` ${nsTime(r.time)}`)))) : null,
    actions.length ? el("div", {}, el("h3", {}, "Response actions"), el("ul", {}, actions.map((x) => el("li", {}, `${nsTime(x.time)} ${x.actor || ""} ${x.decision || ""} ${x.outcome || ""}`)))) : null);
}

// The live storyline: a signed `storyline` to the alert's host, drawn as its process tree.
function storylinePanel(container, host, alertId, carried) {
  const out = el("div", { id: "storyline-result" });
  const ancestors = el("input", { type: "checkbox", id: "storyline-ancestors" });
  const fetchIt = async () => {
    if (!commandKey) return;
    out.replaceChildren(el("p", { class: "notice" }, "asking the host for the storyline…"));
    try {
      const r = await sendCommand(host, { op: "storyline", alert: alertId, max_events: 1000, ancestor_activity: ancestors.checked }, "");
      if (r.status !== "done") return out.replaceChildren(el("p", { class: "error", id: "storyline-error" }, `storyline: ${r.status}: ${(r.output && (r.output.error || r.output.reason)) || "no reason given"}`));
      out.replaceChildren(renderStory(r.output, host));
    } catch (e) { out.replaceChildren(el("p", { class: "error", id: "storyline-error" }, `storyline: ${e.message}`)); }
  };
  const fallback = carried.pid || carried.exe
    ? el("div", { class: "tree" }, el("p", { class: "hint" }, "What the alert itself carries:"), el("ul", {}, el("li", {}, `${carried.ppid || "?"} ${carried.pexe || ""}`, el("ul", {}, el("li", { class: "self" }, `${carried.pid || "?"} ${carried.exe || ""}${carried.cmd ? " — " + carried.cmd : ""}`)))))
    : el("p", {}, "This alert carries no process.");
  if (!canRespond()) {
    container.replaceChildren(el("p", { class: "notice", id: "storyline-role" }, `You are a ${B.role}: the live storyline is a signed host command, which needs the responder role.`), fallback);
    return;
  }
  const file = el("input", { type: "file", id: "storyline-key-file", accept: ".ed25519,.key,text/plain", hidden: true });
  const keyNote = el("span", { id: "storyline-key" });
  const showKeyNote = () => {
    keyNote.className = commandKey ? "hint" : "notice";
    keyNote.textContent = commandKey ? "" : "The storyline comes from the host's own record, asked with a signed command: load your command key (keys/command.ed25519) to fetch it.";
  };
  file.addEventListener("change", () => loadKeyFile(file, keyNote));
  const load = el("button", { type: "button", id: "storyline-load", onclick: () => file.click() }, "Load key and fetch…");
  const again = el("button", { type: "button", id: "storyline-fetch", onclick: () => (commandKey ? fetchIt() : file.click()) }, "Fetch storyline");
  document.addEventListener("edr-key", () => { load.hidden = !!commandKey; if (commandKey && !out.querySelector("#storyline-tree")) fetchIt(); });
  showKeyNote();
  container.replaceChildren(el("div", { class: "panel toolbar" }, load, again, el("label", { class: "inline" }, ancestors, " ancestors' activity too"), file, keyNote), out);
  out.replaceChildren(fallback);
}

async function alertPage() {
  const host = B.host, id = Number(B.alert);
  await loadHostNames();
  const { alerts } = await api("GET", `/api/v1/alerts?host=${encodeURIComponent(host)}&limit=10000&ecs=true`);
  const a = alerts.find((x) => x.alert_id === id);
  if (!a) throw new Error(`no alert ${host}:${B.alert} on this server`);
  const e = a.ecs || {};
  const g = (p) => { const v = ecsGet(e, p); return Array.isArray(v) ? v.join(", ") : v === undefined ? undefined : String(v); };
  $("#alert-detail").replaceChildren(kv([
    ["Rule", `${a.rule_name} (${a.rule_id})`], ["Severity", badge(a.severity)], ["Time", nsTime(a.time)],
    ["Host", el("a", { href: `/console/hosts/${encodeURIComponent(host)}` }, hostName(a))],
    ["Message", g("message")], ["ATT&CK", techniques(a).join(", ")], ["Rule author", g("rule.author")],
    ["Pack", g("edr.pack.id") ? `${g("edr.pack.id")} ${g("edr.pack.version") || ""}` : "built in"], ["Pack signer", g("edr.pack.signer")],
    ["Plugin", g("edr.plugin")], ["Incident", g("edr.incident.id")],
    ["Evidence", Object.keys(ecsGet(e, "edr.evidence") || {}).length ? kv(Object.entries(ecsGet(e, "edr.evidence"))) : "none recorded"],
    ["State", el("span", {}, badge(a.state), a.state_by ? ` by ${a.state_by}` : "", a.note ? ` — ${a.note}` : "")],
  ]));
  storylinePanel($("#storyline"), host, id, { pid: g("process.pid"), exe: g("process.executable"), cmd: g("process.command_line") || g("process.args"), ppid: g("process.parent.pid"), pexe: g("process.parent.executable") });
  const note = el("input", { type: "text", id: "triage-note", size: 40, placeholder: "note" });
  const res = el("span", { id: "triage-result" });
  const set = async (state) => {
    try { await api("POST", `/api/v1/alerts/${encodeURIComponent(host)}/${id}/triage`, { state, note: note.value }); res.className = "ok"; res.textContent = `${state}`; }
    catch (err) { res.className = "error"; res.textContent = err.message; }
  };
  const buttons = ["acknowledged", "closed", "new"].map((s) => el("button", { type: "button", id: `triage-${s}`, onclick: () => set(s), disabled: !canRespond() }, s === "new" ? "Reopen" : s === "closed" ? "Close" : "Acknowledge"));
  $("#triage").replaceChildren(el("div", { class: "toolbar" }, note, buttons, res));
  respondPanel($("#respond"), host, { pid: g("process.pid"), path: g("process.executable") || g("file.path") });
  $("#ecs").textContent = JSON.stringify(e, null, 2);
}

// Merges POST /api/v1/query's answer as the CLI's merge_hunt does: host column first, then every column in first-seen order.
function mergeHunt(answer) {
  const columns = ["host"], rows = [], hosts = [];
  for (const h of answer.hosts || []) {
    const out = h.output || {}, done = h.status === "done";
    const mine = done ? out.columns || [] : [];
    for (const c of mine) if (!columns.slice(1).includes(c)) columns.push(c);
    let n = 0;
    for (const r of done ? out.rows || [] : []) {
      const full = new Array(columns.length).fill(null);
      full[0] = h.host;
      mine.forEach((c, i) => { full[columns.indexOf(c, 1)] = r[i]; });
      rows.push(full);
      n++;
    }
    const why = out.reason || out.error;
    hosts.push({ host: h.host, status: done || h.status === "no_answer" || !why ? h.status : `${h.status}: ${why}`, rows: n, truncated: out.truncated === true });
  }
  rows.forEach((r) => { while (r.length < columns.length) r.push(null); });
  return { columns, rows, hosts };
}
const cellText = (v) => (v === null || v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v));
const csvCell = (s) => (/[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);

// Saved queries (GET/POST /api/v1/queries, DELETE /api/v1/queries/NAME): listed for everyone, run with a click;
// saving and deleting take the responder role (the API enforces it; the page says so).
async function savedQueries() {
  const status = $("#save-status");
  const say = (cls, text) => { status.className = cls; status.textContent = text; };
  const run = (q) => {
    $("#sql").value = q.sql;
    $("#hunt-status").textContent = `running the saved query ${JSON.stringify(q.name)}…`;
    $("#hunt-form").requestSubmit();
  };
  const remove = async (q) => {
    if (!confirm(`Delete the saved query ${JSON.stringify(q.name)}?`)) return;
    try {
      await api("DELETE", `/api/v1/queries/${encodeURIComponent(q.name)}`);
      say("ok", `deleted ${JSON.stringify(q.name)}`);
      await load();
    } catch (e) { say("error", e.message); }
  };
  const load = async () => {
    const { queries } = await api("GET", "/api/v1/queries");
    fillTable($("#saved-queries"), [
      { name: "Name", key: (q) => q.name, cell: (q) => el("span", { class: "saved-name" }, q.name) },
      { name: "What it finds", key: (q) => q.description, cell: (q) => q.description },
      { name: "SQL", cell: (q) => q.sql, mono: true },
      { name: "Saved", key: (q) => -q.saved_at, cell: (q) => `${q.saved_by}, ${ago(q.saved_at)}` },
      { name: "", cell: (q) => [
        el("button", { type: "button", class: "saved-run", onclick: () => run(q) }, "Run"), " ",
        el("button", { type: "button", class: "saved-delete", disabled: !canRespond(), onclick: () => remove(q) }, "Delete"),
      ] },
    ], queries, { empty: "no saved queries yet" });
  };
  if (!canRespond()) {
    $("#saved-role").replaceChildren(el("p", { class: "notice", id: "saved-disabled" }, `You are a ${B.role}: you may run saved queries; saving and deleting them needs the responder role.`));
    $("#save-query").disabled = true;
  }
  $("#save-query").addEventListener("click", async () => {
    const body = { name: $("#save-name").value, sql: $("#sql").value, description: $("#save-desc").value, replace: $("#save-replace").checked };
    try {
      const r = await api("POST", "/api/v1/queries", body);
      say("ok", `${r.action} ${JSON.stringify(r.query.name)}`);
      await load();
    } catch (e) { say("error", e.message); }
  });
  await load();
}

async function huntPage() {
  keyPanel($("#key-panel"));
  const { hosts } = await api("GET", "/api/v1/hosts");
  const picks = hosts.map((h) => {
    const c = el("input", { type: "checkbox", class: "hunt-host", value: h.host_id });
    c.checked = h.state === "online" || h.state === "isolated";
    return el("label", { class: "inline" }, c, ` ${h.hostname} `, badge(h.state));
  });
  $("#hunt-hosts").replaceChildren(el("div", { class: "panel" }, "Hosts: ", picks.length ? picks : "none enrolled"));
  let merged = null;
  $("#hunt-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("#hunt-status");
    const chosen = [...document.querySelectorAll(".hunt-host:checked")].map((c) => c.value);
    if (!chosen.length) { status.className = "error"; status.textContent = "choose at least one host"; return; }
    try {
      const limit = Number($("#limit").value) || 1000;
      const sql = $("#sql").value;
      const commands = [];
      for (const h of chosen) commands.push(await signCommand(h, { op: "query", sql, limit }, ""));
      status.className = "notice"; status.textContent = `asking ${chosen.length} host(s)…`;
      merged = mergeHunt(await api("POST", "/api/v1/query", { commands, timeout_secs: 30 }));
      const t = $("#hunt-result");
      const cols = merged.columns.map((c, i) => ({ name: c, key: (r) => cellText(r[i]), cell: (r) => cellText(r[i]), mono: i > 0 }));
      fillTable(t, cols, merged.rows, { empty: "no rows" });
      status.className = merged.hosts.every((h) => h.status === "done") ? "ok" : "notice";
      status.textContent = `${merged.rows.length} row(s). ` + merged.hosts.map((h) => `${h.host}: ${h.status}, ${h.rows} row(s)${h.truncated ? ", truncated" : ""}`).join("; ");
      $("#export-csv").disabled = $("#export-json").disabled = false;
    } catch (e) { status.className = "error"; status.textContent = e.message; }
  });
  await savedQueries();
  $("#export-csv").addEventListener("click", () => {
    const lines = [merged.columns.map(csvCell).join(","), ...merged.rows.map((r) => r.map((v) => csvCell(cellText(v))).join(","))];
    downloadBlob("hunt.csv", lines.join("\r\n") + "\r\n", "text/csv");
  });
  $("#export-json").addEventListener("click", () => downloadBlob("hunt.json", JSON.stringify(merged, null, 2), "application/json"));
}

// ---- packs ------------------------------------------------------------------------------------

const canAdmin = () => RANK[B.role] >= RANK.admin;
const PACK_STATE_CLASS = { active: "online", staged: "acknowledged", pending: "new", refused: "high", no_answer: "offline", rolled_back: "closed", rollback_failed: "critical" };
const packBadge = (st) => el("span", { class: `badge ${PACK_STATE_CLASS[st] || ""}` }, st);

async function packsPage() {
  await loadHostNames();
  if (canAdmin()) keyPanel($("#key-panel"));
  const open = async (name) => {
    const r = await api("GET", `/api/v1/packs/${encodeURIComponent(name)}`);
    $("#pack-detail").hidden = false;
    $("#pack-name").textContent = `${r.name} ${r.version}`;
    $("#pack-summary").replaceChildren(kv([["sha256", el("span", { class: "mono" }, r.sha256)], ["Size", `${r.size} bytes in ${r.chunks} chunk(s)`],
      ["Rollout", r.halted ? "halted: hosts not yet reached get nothing" : "running or finished"]]));
    fillTable($("#pack-hosts"), [
      { name: "Host", key: (h) => hostNames[h.host] || h.host, cell: (h) => el("a", { href: `/console/hosts/${encodeURIComponent(h.host)}`, title: h.host }, hostNames[h.host] || h.host) },
      { name: "State", key: (h) => h.state, cell: (h) => packBadge(h.state) },
      { name: "Reason", cell: (h) => h.reason || "" },
      { name: "Since", key: (h) => -h.time, cell: (h) => ago(h.time) },
      { name: "Heartbeat shows", cell: (h) => h.heartbeat_version || "" },
    ], r.hosts, { rowId: (h) => h.host, empty: "no host targeted" });
    packActions(r, () => open(name).then(list));
  };
  const list = async () => {
    const { packs } = await api("GET", "/api/v1/packs");
    fillTable($("#packs"), [
      { name: "Pack", key: (p) => p.name, cell: (p) => el("button", { type: "button", class: "pack-open", "data-name": p.name, onclick: () => open(p.name).catch((e) => showError(e.message)) }, p.name) },
      { name: "Version", key: (p) => p.version, cell: (p) => p.version },
      { name: "Published", key: (p) => -p.published_at, cell: (p) => ago(p.published_at) },
      { name: "Rollout", cell: (p) => (p.rolled_back ? "rolled back" : p.halted ? "halted" : "rolling out / done") },
      { name: "Hosts", cell: (p) => el("span", {}, Object.entries(p.states || {}).map(([k, n]) => el("span", {}, packBadge(k), ` ${n} `))) },
    ], packs, { rowId: (p) => p.name, empty: "no pack published: `edr fleet pack publish PACK.tar.zst` starts a rollout" });
  };
  await list();
}

// Halt (responder) and roll back (admin, one operator-signed pack_rollback per host with it staged or active).
function packActions(r, reload) {
  const reason = el("input", { type: "text", id: "pack-reason", size: 40, placeholder: "reason (signed with the rollback, kept in the audit)" });
  const halt = el("button", { type: "button", id: "pack-halt", disabled: r.halted || !canRespond() }, "Halt rollout");
  const back = el("button", { type: "button", id: "pack-rollback", class: "danger", disabled: !canAdmin() }, "Roll back…");
  const res = $("#pack-result");
  res.replaceChildren();
  const say = (cls, text) => res.replaceChildren(el("p", { class: cls, id: "pack-status" }, text));
  halt.addEventListener("click", async () => {
    if (!window.confirm(`Halt the rollout of ${r.name} ${r.version}? Hosts not yet reached get nothing; hosts that have it keep it.`)) return say("notice", "cancelled");
    try { await api("POST", `/api/v1/packs/${encodeURIComponent(r.name)}/halt`, {}); say("ok", `${r.name} ${r.version}: halted`); await reload(); say("ok", `${r.name} ${r.version}: halted`); }
    catch (e) { say("error", e.message); }
  });
  back.addEventListener("click", async () => {
    const hosts = r.hosts.filter((h) => h.state === "staged" || h.state === "active").map((h) => h.host);
    if (!hosts.length) return say("error", `no host has ${r.name} ${r.version} staged or active: nothing to roll back`);
    if (!reason.value.trim()) return say("error", "give a reason: it is signed with each rollback command and kept in the audit");
    if (!commandKey) return say("error", "no command key loaded: load your key file above (the server cannot sign for you)");
    if (!window.confirm(`Roll ${r.name} back from ${r.version} on ${hosts.length} host(s) (${hosts.map((h) => hostNames[h] || h).join(", ")})?\nReason: ${reason.value.trim()}\n\nSign and send?`)) return say("notice", "cancelled");
    back.disabled = true;
    try {
      const commands = [];
      for (const h of hosts) commands.push(await signCommand(h, { op: "pack_rollback", name: r.name, version: r.version }, reason.value.trim()));
      say("notice", `asking ${hosts.length} host(s)…`);
      const a = await api("POST", `/api/v1/packs/${encodeURIComponent(r.name)}/rollback`, { commands });
      const failed = a.hosts.filter((h) => h.state !== "rolled_back");
      await reload();
      say(failed.length ? "error" : "ok", `rollback of ${r.name} ${r.version}: ` + a.hosts.map((h) => `${hostNames[h.host] || h.host} ${h.state}${h.reason ? " — " + h.reason : ""}`).join("; "));
    } catch (e) { say("error", e.message); } finally { back.disabled = !canAdmin(); }
  });
  const who = !canRespond() ? el("p", { class: "notice", id: "pack-disabled" }, `You are a ${B.role}: halting a rollout needs the responder role, rolling back the admin role.`)
    : !canAdmin() ? el("p", { class: "notice", id: "pack-disabled" }, `You are a ${B.role}: you may halt; rolling back needs the admin role.`) : null;
  if (!canAdmin()) reason.disabled = true;
  $("#pack-actions").replaceChildren(who || "", el("div", { class: "panel toolbar" }, halt, reason, back));
}

async function auditPage() {
  const { audit } = await api("GET", "/api/v1/audit?limit=500");
  const detail = (e) => {
    const c = e.change || {};
    switch (c.kind) {
      case "triage": return `${c.host_id}:${c.alert_id} → ${c.state}${c.note ? " — " + c.note : ""}`;
      case "command": return `${c.op} on ${c.host_id}: ${c.status}${c.reason ? " — " + c.reason : ""}${c.error ? " (" + c.error + ")" : ""}`;
      case "login": return `${c.user} ${c.outcome} from ${c.from}`;
      case "saved_query": return `${c.action} saved query ${JSON.stringify(c.name)}: ${c.sql}`;
      case "enrolled": return `${c.hostname} as ${c.host_id}`;
      case "token_created": return `enrollment token until ${new Date(c.expires_at * 1000).toISOString()}`;
      default: return JSON.stringify(c);
    }
  };
  fillTable($("#audit"), [
    { name: "Time", key: (e) => -e.time, cell: (e) => new Date(e.time * 1000).toISOString().replace("T", " ").slice(0, 19) },
    { name: "Who", key: (e) => e.actor, cell: (e) => e.actor },
    { name: "What", key: (e) => (e.change || {}).kind, cell: (e) => (e.change || {}).kind },
    { name: "Detail", cell: detail },
  ], audit);
}

const PAGES = { hosts: hostsPage, host: hostPage, alerts: alertsPage, alert: alertPage, hunt: huntPage, packs: packsPage, audit: auditPage };

document.addEventListener("DOMContentLoaded", () => {
  const out = $("#logout");
  if (out) out.addEventListener("click", async () => { try { await api("POST", "/console/logout", {}); } catch (_) { /* gone already */ } location.href = "/console/login"; });
  const page = PAGES[B.page];
  if (page) page().then(() => document.body.setAttribute("data-ready", "1"), (e) => { showError(e.message); document.body.setAttribute("data-ready", "error"); });
});
