// Weft's dashboard: plain ES module, no build step. The graph is drawn by cytoscape.js with the
// dagre layered layout (https://js.cytoscape.org/, https://github.com/cytoscape/cytoscape.js-dagre).
// The layout runs only when nodes or edges come or go; traffic ticks change labels and colours.

/* global cytoscape, cytoscapeDagre */
cytoscape.use(cytoscapeDagre);

const $ = (sel) => document.querySelector(sel);
const api = async (path, options) => {
  const r = await fetch(path, { credentials: "same-origin", ...options });
  if (r.status === 401) throw new NeedsLogin();
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.status === 204 ? null : r.json();
};
class NeedsLogin extends Error {}

const state = { mesh: null, events: null, graph: null, live: null, tab: "topology", resource: null, proxyKey: null };
const dashboard = { state, cy: null, layouts: 0, updates: 0 };
window.weftDashboard = dashboard;

function message(text) {
  const m = $("#message");
  m.textContent = text;
  m.hidden = !text;
}

const fmt = (n, digits = 1) => (n >= 100 ? n.toFixed(0) : n.toFixed(digits));

// An edge's label: its route share, then its live figures when it carries traffic.
function edgeLabel(e, live) {
  const parts = [];
  if (e.kind === "route" && e.percent != null) parts.push(`${e.route} ${e.percent}%`);
  if (e.kind === "gatewayRoute") parts.push(e.route);
  const head = parts.join(" ");
  if (!live || !(live.rps > 0)) return head;
  // "≤": Envoy's stats do not say which of several routes to this node a request matched.
  const figures = [`${live.shared ? "≤" : ""}${fmt(live.rps)} rps`, `${fmt(live.error_rate * 100)}% err`];
  if (live.p99_ms != null) figures.push(`p99 ${fmt(live.p99_ms)} ms`);
  return head ? `${head}\n${figures.join(" · ")}` : figures.join(" · ");
}

function nodeLabel(n, live) {
  if (live && live.rps > 0) return `${n.name}\n${fmt(live.rps)} rps · ${fmt(live.error_rate * 100)}% err`;
  return n.name;
}

function makeGraph() {
  dashboard.cy = cytoscape({
    container: $("#graph"),
    wheelSensitivity: 0.3,
    minZoom: 0.05,
    style: [
      { selector: "node", style: { label: "data(label)", "text-wrap": "wrap", "font-size": 11, "text-valign": "bottom", "text-margin-y": 4, width: 28, height: 28, "border-width": 2, "border-color": "#fff" } },
      { selector: "node[kind = 'virtualService']", style: { shape: "round-rectangle", "background-color": "#0073bb" } },
      { selector: "node[kind = 'virtualRouter']", style: { shape: "diamond", "background-color": "#8c4fff" } },
      { selector: "node[kind = 'virtualNode']", style: { shape: "ellipse", "background-color": "#1d8102" } },
      { selector: "node[kind = 'virtualGateway']", style: { shape: "hexagon", "background-color": "#ff9900" } },
      { selector: "node.failing", style: { "border-color": "#d13212", "border-width": 4 } },
      { selector: "edge", style: { width: 2, "curve-style": "bezier", "target-arrow-shape": "triangle", "line-color": "#879596", "target-arrow-color": "#879596", label: "data(label)", "font-size": 10, "text-background-color": "#fff", "text-background-opacity": 0.85, "text-background-padding": 2, "text-rotation": "autorotate", "text-wrap": "wrap", "control-point-step-size": 70 } },
      { selector: "edge[kind = 'route']", style: { "line-color": "#8c4fff", "target-arrow-color": "#8c4fff" } },
      { selector: "edge.busy", style: { width: 3 } },
      { selector: "edge.failing", style: { "line-color": "#d13212", "target-arrow-color": "#d13212", color: "#d13212", width: 4 } },
      { selector: ":selected", style: { "overlay-opacity": 0.15 } },
    ],
  });
  dashboard.cy.on("tap", "node", (ev) => {
    const d = ev.target.data();
    $("#selected").textContent = `${d.kind} ${d.name}, version ${d.version}, ${d.status}`;
    const [code, name] = d.id.split(/:(.*)/s);
    showResource({ code, name, parent: null });
  });
  dashboard.cy.on("tap", "edge", (ev) => showEdge(ev.target.id()).catch(failed));
}

const SVG = "http://www.w3.org/2000/svg";

// A sparkline of `values` (one per flush), as CloudWatch draws a metric over time.
function sparkline(values, color, label) {
  const w = 220, h = 40;
  // One flush so far: a level line.
  if (values.length === 1) values = [values[0], values[0]];
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const max = Math.max(...values, 1e-9);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", color); line.setAttribute("stroke-width", "2");
  svg.append(line);
  const div = document.createElement("div");
  div.className = "spark";
  div.append(`${label} (max ${fmt(max)})`, document.createElement("br"), svg);
  return div;
}

// The traffic that crossed an edge, per source and target, with its history.
async function showEdge(id) {
  const q = new URLSearchParams({ mesh: state.mesh, id });
  const { traffic } = await api(`/ui/api/edge?${q}`);
  const panel = $("#selected");
  const title = document.createElement("b");
  title.textContent = id;
  panel.replaceChildren(title);
  if (!traffic.length) panel.append(document.createElement("br"), "No traffic in the last minute.");
  for (const t of traffic) {
    const head = document.createElement("p");
    const ms = (v) => (v == null ? "-" : fmt(v));
    head.textContent = `${t.source.name} → ${t.target.name}: ${fmt(t.rps)} rps, ${fmt(t.error_rate * 100)}% errors, p50/p90/p99 ${ms(t.p50_ms)}/${ms(t.p90_ms)}/${ms(t.p99_ms)} ms`;
    panel.append(head,
      sparkline(t.history.map((p) => p.rps), "#0073bb", "requests/s"),
      sparkline(t.history.map((p) => p.error_rate * 100), "#d13212", "errors %"),
      sparkline(t.history.map((p) => p.p99_ms || 0), "#8c4fff", "p99 ms"));
  }
}

// Applies a whole graph: adds and removes what changed, updates the rest in place, and lays
// out again only when the set of elements changed.
function applyGraph(graph, live) {
  const cy = dashboard.cy;
  state.graph = graph;
  const wanted = new Map();
  for (const n of graph.nodes) wanted.set(n.id, { group: "nodes", data: { ...n, label: n.name } });
  for (const e of graph.edges) wanted.set(e.id, { group: "edges", data: { ...e, label: edgeLabel(e) } });
  let changed = false;
  cy.batch(() => {
    cy.elements().forEach((el) => {
      if (!wanted.has(el.id())) { el.remove(); changed = true; }
    });
    const added = [];
    for (const [id, el] of wanted) {
      const existing = cy.getElementById(id);
      if (existing.nonempty()) existing.data(el.data);
      else added.push(el);
    }
    if (added.length) {
      // Nodes before the edges that reference them.
      added.sort((a, b) => (a.group === b.group ? 0 : a.group === "nodes" ? -1 : 1));
      cy.add(added);
      changed = true;
    }
  });
  if (changed) {
    dashboard.layouts += 1;
    cy.layout({ name: "dagre", rankDir: "LR", nodeSep: 90, rankSep: 240, animate: false }).run();
    cy.fit(undefined, 60);
    // A small mesh is not blown up to the window's size.
    if (cy.zoom() > 1.2) { cy.zoom(1.2); cy.center(); }
  }
  applyLive(live);
}

// Applies the live figures: labels and colours only.
function applyLive(live) {
  if (!live) return;
  state.live = live;
  $("#threshold").textContent = String(Math.round(live.threshold * 100));
  const cy = dashboard.cy;
  cy.batch(() => {
    cy.edges().forEach((el) => {
      const l = live.edges[el.id()];
      el.data("live", l || null);
      el.data("label", edgeLabel(el.data(), l));
      el.toggleClass("failing", Boolean(l && l.failing));
      el.toggleClass("busy", Boolean(l && l.rps > 0));
    });
    cy.nodes().forEach((el) => {
      const l = live.nodes[el.id()];
      el.data("live", l || null);
      el.data("label", nodeLabel(el.data(), l));
      el.toggleClass("failing", Boolean(l && l.failing));
    });
  });
  dashboard.updates += 1;
}

function follow(mesh) {
  if (state.events) state.events.close();
  const status = $("#status");
  const events = new EventSource(`/ui/api/events?mesh=${encodeURIComponent(mesh)}`);
  state.events = events;
  events.addEventListener("graph", (m) => {
    const { graph, live } = JSON.parse(m.data);
    applyGraph(graph, live);
    if (state.tab === "resources") loadResources().catch(failed);
  });
  events.addEventListener("meshes", (m) => showMeshes(JSON.parse(m.data).meshes));
  events.addEventListener("live", (m) => applyLive(JSON.parse(m.data)));
  events.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  // EventSource reconnects by itself; say so meanwhile.
  events.onerror = () => { status.textContent = "reconnecting…"; status.className = "status down"; };
}

// ---- Resources ----

const kindNames = { vn: "virtualNode", vs: "virtualService", vr: "virtualRouter", rt: "route", vg: "virtualGateway", gr: "gatewayRoute" };

async function loadResources() {
  const { resources } = await api(`/ui/api/resources?mesh=${encodeURIComponent(state.mesh)}`);
  const body = $("#resource-list tbody");
  body.replaceChildren(...resources.map((r) => {
    const tr = document.createElement("tr");
    const name = r.parent ? `${r.parent} / ${r.name}` : r.name;
    for (const text of [r.kind, name, String(r.version), r.status]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.dataset.key = `${r.code}|${r.parent || ""}|${r.name}`;
    tr.addEventListener("click", () => showResource(r));
    return tr;
  }));
  if (state.resource) showResource(state.resource, true);
}

function refLink(ref) {
  const a = document.createElement("a");
  a.className = "ref";
  a.textContent = `${kindNames[ref.code] || ref.code} ${ref.parent ? ref.parent + "/" : ""}${ref.name} (${ref.how})`;
  a.addEventListener("click", () => showResource(ref));
  return a;
}

// A line diff (longest common subsequence) of two JSON documents.
function diffLines(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const n = x.length, m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
    else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(["+", y[j]]); j++; }
    else { out.push(["-", x[i]]); i++; }
  }
  return out;
}

function section(title, ...children) {
  const div = document.createElement("div");
  const h = document.createElement("h3");
  h.textContent = title;
  div.append(h, ...children);
  return div;
}

async function showResource(ref, quiet) {
  state.resource = ref;
  if (!quiet && state.tab !== "resources") return;
  const q = new URLSearchParams({ mesh: state.mesh, code: ref.code, name: ref.name });
  if (ref.parent) q.set("parent", ref.parent);
  let r;
  try { r = await api(`/ui/api/resource?${q}`); } catch (e) { if (e instanceof NeedsLogin) throw e; return; }
  const detail = $("#resource-detail");
  const title = document.createElement("h2");
  const meta = r.data.metadata || {};
  title.textContent = `${r.kind} ${ref.parent ? ref.parent + " / " : ""}${ref.name} — version ${meta.version}, ${(r.data.status || {}).status || ""}`;
  const spec = document.createElement("pre");
  spec.textContent = JSON.stringify(r.data.spec, null, 2);
  const uses = document.createElement("div");
  r.references.forEach((x) => uses.append(refLink(x)));
  const usedBy = document.createElement("div");
  r.referencedBy.forEach((x) => usedBy.append(refLink(x)));
  if (!r.references.length) uses.textContent = "nothing";
  if (!r.referencedBy.length) usedBy.textContent = "nothing";
  // History: pick two versions, see the diff of their specs.
  const versions = r.history.map((h) => ({ v: (h.metadata || {}).version, text: JSON.stringify(h.spec, null, 2) }));
  const from = document.createElement("select"), to = document.createElement("select");
  for (const s of [from, to]) for (const h of versions) s.append(new Option(`version ${h.v}`, String(h.v)));
  from.selectedIndex = Math.max(0, versions.length - 2);
  to.selectedIndex = versions.length - 1;
  const diff = document.createElement("pre");
  diff.className = "diff";
  const redraw = () => {
    const a = versions[from.selectedIndex], b = versions[to.selectedIndex];
    if (!a || !b) return;
    diff.replaceChildren(...diffLines(a.text, b.text).map(([op, line]) => {
      const span = document.createElement("div");
      span.className = op === "+" ? "add" : op === "-" ? "del" : "";
      span.textContent = `${op} ${line}`;
      return span;
    }));
  };
  from.onchange = redraw; to.onchange = redraw;
  redraw();
  const pick = document.createElement("div");
  pick.append("from ", from, " to ", to);
  detail.replaceChildren(title, section("Spec", spec), section("Uses", uses), section("Used by", usedBy),
    section(`History (${versions.length} kept)`, pick, diff));
  document.querySelectorAll("#resource-list tr").forEach((tr) =>
    tr.classList.toggle("selected", tr.dataset.key === `${ref.code}|${ref.parent || ""}|${ref.name}`));
}

// ---- Proxies ----

async function loadProxies() {
  const { proxies } = await api("/ui/api/proxies");
  const body = $("#proxy-list tbody");
  const short = (v) => (v ? v.slice(0, 12) : "-");
  body.replaceChildren(...proxies.map((p) => {
    const tr = document.createElement("tr");
    const acked = (t) => short((p.types[t] || {}).ackedVersion);
    const nack = p.lastNack ? `${p.lastNack.type} ${short(p.lastNack.version)}: ${p.lastNack.message}` : "-";
    const cells = [p.nodeId, p.rollout, acked("Cluster"), acked("ClusterLoadAssignment"), acked("Listener"), acked("RouteConfiguration"), String(p.nackCount), nack];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 7 && p.lastNack) td.className = "nack";
      tr.append(td);
    });
    tr.addEventListener("click", () => { state.proxyKey = p.snapshotKey; loadProxyConfig(); });
    return tr;
  }));
  if (!proxies.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 8; td.textContent = "No proxy connected.";
    tr.append(td); body.append(tr);
  }
}

async function loadProxyConfig() {
  if (!state.proxyKey) return;
  const c = await api(`/ui/api/proxy-config?key=${encodeURIComponent(state.proxyKey)}`);
  const lines = [`${c.key} — snapshot ${c.version}`];
  for (const t of c.types) {
    lines.push("", `== ${t.type} (version ${t.version}) ==`);
    for (const r of t.resources) lines.push(`-- ${r.name}`, r.config);
  }
  $("#proxy-config").textContent = lines.join("\n");
}

// ---- Tabs, meshes, login ----

function showTab(tab) {
  state.tab = tab;
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  document.querySelectorAll(".tab").forEach((s) => s.classList.toggle("active", s.id === tab));
  if (tab === "topology") { dashboard.cy.resize(); }
  if (tab === "resources") loadResources().catch(failed);
  if (tab === "proxies") loadProxies().catch(failed);
}

function failed(e) {
  if (e instanceof NeedsLogin) {
    message("This dashboard needs a session: run `weft dashboard` and open the URL it prints.");
  } else {
    message(String(e.message || e));
  }
}

async function login() {
  const params = new URLSearchParams(location.search);
  const token = params.get("login");
  if (!token) return;
  // The token is single-use; drop it from the address bar and history either way.
  params.delete("login");
  history.replaceState(null, "", location.pathname + (params.size ? `?${params}` : "") + location.hash);
  await fetch("/ui/api/login", { method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" }, body: JSON.stringify({ token }) })
    .then((r) => { if (!r.ok) message("The login token is unknown, used or expired: run `weft dashboard` again."); });
}

// The mesh selector follows meshes created or deleted since the page opened.
function showMeshes(meshes) {
  const select = $("#mesh");
  const shown = [...select.options].map((o) => o.value);
  if (shown.join("\n") === meshes.join("\n")) return;
  select.replaceChildren(...meshes.map((m) => new Option(m, m)));
  if (meshes.includes(state.mesh)) select.value = state.mesh;
}

async function selectMesh(mesh) {
  state.mesh = mesh;
  location.hash = `mesh=${encodeURIComponent(mesh)}`;
  dashboard.cy.elements().remove();
  const { graph, live } = await api(`/ui/api/graph?mesh=${encodeURIComponent(mesh)}`);
  applyGraph(graph, live);
  follow(mesh);
  if (state.tab !== "topology") showTab(state.tab);
}

async function start() {
  makeGraph();
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  setInterval(() => { if (state.tab === "proxies") loadProxies().then(loadProxyConfig).catch(failed); }, 3000);
  await login();
  let meshes = [];
  // Until a mesh exists, look again every 2 s.
  for (;;) {
    ({ meshes } = await api("/ui/api/meshes"));
    if (meshes.length) break;
    message("No mesh yet: create one with the AWS CLI or SDK.");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  message("");
  const select = $("#mesh");
  select.replaceChildren(...meshes.map((m) => new Option(m, m)));
  select.onchange = () => selectMesh(select.value).catch(failed);
  const wanted = new URLSearchParams(location.hash.slice(1)).get("mesh");
  const mesh = meshes.includes(wanted) ? wanted : meshes[0];
  select.value = mesh;
  await selectMesh(mesh);
  dashboard.ready = true;
}

start().catch(failed);
