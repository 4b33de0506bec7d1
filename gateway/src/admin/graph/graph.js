// The mesh graph: polls /graph/data and draws workloads as boxes and traffic as arrows, with a
// closed lock on mutual-TLS edges and an open one on plaintext. Plain DOM and SVG, no
// dependencies: the page is served from the binary and must work without the internet.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 2000;
  const WIDTH = 1000;
  const NODE_W = 176;
  const NODE_H = 58;
  // Kiali's default thresholds for an edge's error rate.
  const FAILURE = 0.2;

  const params = new URLSearchParams(location.search);
  const asked = params.get("source");
  const dataUrl = "/graph/data" + (asked ? "?source=" + encodeURIComponent(asked) : "");

  // For the local source, which reports totals: the previous poll, to turn them into rates.
  let previous = null;

  function svg(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }

  function html(name, text, parent) {
    const e = document.createElement(name);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function edgeKey(e) {
    return e.source + " -> " + e.target + " " + e.security;
  }

  // A padlock, centred on (0, 0): closed for mutual TLS, shackle lifted for plaintext.
  function lock(security, parent) {
    const state = security === "mutual_tls" ? "closed" : security === "none" ? "open" : "unknown";
    const g = svg("g", { class: "lock " + state, "data-lock": state }, parent);
    const shackle =
      state === "closed" ? "M-4.5,0 V-4 A4.5,4.5 0 0 1 4.5,-4 V0" : "M-4.5,0 V-5.5 A4.5,4.5 0 0 1 4.5,-5.5 V-4";
    svg("path", { d: shackle }, g);
    svg("rect", { x: -7, y: -0.5, width: 14, height: 10, rx: 2 }, g);
    const title = { closed: "mutual TLS", open: "plaintext", unknown: "security unknown" }[state];
    svg("title", {}, g).textContent = title;
    return g;
  }

  function fmtRate(r) {
    if (r === null) return "–";
    if (r === 0) return "0";
    if (r >= 100) return r.toFixed(0);
    if (r >= 0.01) return r.toPrecision(3).replace(/\.?0+$/, "");
    return r.toExponential(1);
  }

  function fmtPct(f) {
    return (f * 100).toFixed(f === 0 || f === 1 ? 0 : 1) + "%";
  }

  // Per edge: requests per second and the error fraction.
  function measure(data, now) {
    const perSecond = data.unit === "requests_per_second";
    const totals = new Map();
    const out = new Map();
    for (const e of data.edges) {
      const key = edgeKey(e);
      totals.set(key, e.requests);
      let rps = null;
      if (perSecond) {
        rps = e.requests;
      } else if (previous && now - previous.at > 500) {
        const before = previous.totals.get(key) || 0;
        rps = Math.max(0, e.requests - before) / ((now - previous.at) / 1000);
      }
      const errorRate = e.requests > 0 ? e.errors / e.requests : 0;
      out.set(key, { rps, errorRate });
    }
    if (!perSecond) previous = { at: now, totals };
    return out;
  }

  function health(errorRate) {
    if (errorRate >= FAILURE) return "failure";
    if (errorRate > 0) return "degraded";
    return "healthy";
  }

  // Columns by distance from the nodes nobody calls (the clients), rows in id order.
  function layout(data) {
    const depth = new Map(data.nodes.map((n) => [n.id, 0]));
    const n = data.nodes.length;
    // Longest path, bounded by the node count so that cycles end.
    for (let round = 0; round < n; round++) {
      let changed = false;
      for (const e of data.edges) {
        if (e.source === e.target) continue;
        const d = (depth.get(e.source) || 0) + 1;
        if (d < n && d > (depth.get(e.target) || 0)) {
          depth.set(e.target, d);
          changed = true;
        }
      }
      if (!changed) break;
    }
    const columns = [];
    for (const node of data.nodes) {
      const d = depth.get(node.id);
      (columns[d] = columns[d] || []).push(node);
    }
    const filled = columns.filter(Boolean);
    const rows = Math.max(1, ...filled.map((c) => c.length));
    const height = Math.max(420, rows * 150 + 60);
    const pos = new Map();
    filled.forEach((column, ci) => {
      const x = filled.length === 1 ? WIDTH / 2 : 130 + (ci * (WIDTH - 260)) / (filled.length - 1);
      column.forEach((node, ri) => {
        pos.set(node.id, { x, y: ((ri + 0.5) * height) / column.length });
      });
    });
    return { pos, height };
  }

  // Where the line from the centre of a node box towards (dx, dy) leaves the box.
  function clip(p, dx, dy) {
    const len = Math.hypot(dx, dy) || 1;
    const t = Math.min((NODE_W / 2 + 4) / Math.abs(dx / len || 1e-9), (NODE_H / 2 + 4) / Math.abs(dy / len || 1e-9));
    return { x: p.x + (dx / len) * t, y: p.y + (dy / len) * t };
  }

  // `totals`: the edge's requests are counted since start (local source), shown beside the rate.
  function drawEdge(layer, e, m, totals, from, to, bend) {
    const g = svg(
      "g",
      {
        class: "edge " + health(m.errorRate),
        "data-source": e.source,
        "data-target": e.target,
        "data-security": e.security,
        "data-requests": e.requests,
        "data-errors": e.errors,
        "data-error-rate": m.errorRate.toFixed(4),
        "data-rps": m.rps === null ? "" : m.rps.toFixed(4),
      },
      layer,
    );
    let d, label;
    if (e.source === e.target) {
      const top = from.y - NODE_H / 2;
      d = `M${from.x - 24},${top} C${from.x - 70},${top - 95} ${from.x + 70},${top - 95} ${from.x + 24},${top}`;
      label = { x: from.x, y: top - 75 };
    } else {
      const mx = (from.x + to.x) / 2;
      const my = (from.y + to.y) / 2;
      const len = Math.hypot(to.x - from.x, to.y - from.y) || 1;
      const nx = -(to.y - from.y) / len;
      const ny = (to.x - from.x) / len;
      // The control point is twice as far out as the curve's apex.
      const c = { x: mx + nx * bend * 2, y: my + ny * bend * 2 };
      const a = clip(from, c.x - from.x, c.y - from.y);
      const b = clip(to, c.x - to.x, c.y - to.y);
      d = `M${a.x},${a.y} Q${c.x},${c.y} ${b.x},${b.y}`;
      label = { x: 0.25 * a.x + 0.5 * c.x + 0.25 * b.x, y: 0.25 * a.y + 0.5 * c.y + 0.25 * b.y };
    }
    svg("path", { class: "wire", d, "marker-end": `url(#arrow-${health(m.errorRate)})` }, g);
    const security = { mutual_tls: "mutual TLS", none: "plaintext" }[e.security] || "security unknown";
    svg("title", {}, g).textContent =
      `${e.source} → ${e.target}: ${security}` + (e.services.length ? `, ${e.services.join(", ")}` : "");

    const box = svg("g", { class: "label", transform: `translate(${label.x},${label.y})` });
    g.appendChild(box);
    const bg = svg("rect", { rx: 6, y: -19, height: 38 }, box);
    const icon = lock(e.security, box);
    const line1 = svg("text", { class: "rate", y: -3 }, box);
    line1.textContent = `${fmtRate(m.rps)} req/s`;
    const line2 = svg("text", { class: "errors", y: 12 }, box);
    line2.textContent =
      `${fmtPct(m.errorRate)} errors` + (totals ? ` · ${Math.round(e.requests)} req` : "");
    let textW = 0;
    try {
      textW = Math.max(line1.getComputedTextLength(), line2.getComputedTextLength());
    } catch (_) {
      textW = 7 * Math.max(line1.textContent.length, line2.textContent.length);
    }
    const w = textW + 42;
    bg.setAttribute("x", -w / 2);
    bg.setAttribute("width", w);
    icon.setAttribute("transform", `translate(${-w / 2 + 16},-4) scale(1.25)`);
    line1.setAttribute("x", -w / 2 + 31);
    line2.setAttribute("x", -w / 2 + 31);
  }

  function drawNode(layer, node, p) {
    const unknown = node.workload === "unknown";
    const cls = "node" + (node.local ? " local" : "") + (unknown ? " unknown" : "");
    const g = svg("g", { class: cls, "data-node": node.id, transform: `translate(${p.x},${p.y})` }, layer);
    svg("rect", { x: -NODE_W / 2, y: -NODE_H / 2, width: NODE_W, height: NODE_H, rx: 10 }, g);
    svg("text", { class: "name", y: -3 }, g).textContent = node.workload;
    const sub = unknown ? "outside the mesh" : node.namespace + (node.local ? " · this node" : "");
    svg("text", { class: "namespace", y: 15 }, g).textContent = sub;
  }

  function render(data) {
    const m = measure(data, performance.now());
    const graph = document.getElementById("graph");
    for (const old of graph.querySelectorAll(".edges, .nodes, .empty")) old.remove();
    const { pos, height } = layout(data);
    graph.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
    const edges = svg("g", { class: "edges" }, graph);
    const nodes = svg("g", { class: "nodes" }, graph);

    // Parallel edges between the same two nodes (mutual TLS and plaintext) bend apart.
    const pairs = new Map();
    for (const e of data.edges) {
      const pair = [e.source, e.target].sort().join(" ");
      (pairs.get(pair) || pairs.set(pair, []).get(pair)).push(e);
    }
    for (const group of pairs.values()) {
      group.forEach((e, i) => {
        const flip = e.source < e.target ? 1 : -1;
        const bend = group.length === 1 ? 0 : (i - (group.length - 1) / 2) * 90 * flip;
        const totals = data.unit === "requests";
        drawEdge(edges, e, m.get(edgeKey(e)), totals, pos.get(e.source), pos.get(e.target), bend);
      });
    }
    for (const node of data.nodes) drawNode(nodes, node, pos.get(node.id));
    if (data.edges.length === 0) {
      const t = svg("text", { class: "empty", x: WIDTH / 2, y: height / 2 + 70 }, graph);
      t.textContent = "No requests yet.";
    }
    renderTable(data, m);

    document.getElementById("source").textContent =
      data.source === "prometheus"
        ? `Prometheus ${data.prometheus}, rate over ${data.window}`
        : "this gateway's own traffic: totals since start, rates between polls";
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.graphSource = data.source;
    document.body.dataset.state = "ready";
  }

  function renderTable(data, m) {
    const names = new Map(data.nodes.map((n) => [n.id, n.workload === "unknown" ? "unknown" : `${n.workload} (${n.namespace})`]));
    const body = document.querySelector("#edges tbody");
    body.replaceChildren();
    for (const e of data.edges) {
      const x = m.get(edgeKey(e));
      const tr = html("tr", undefined, body);
      html("td", names.get(e.source) || e.source, tr);
      html("td", names.get(e.target) || e.target, tr);
      html("td", e.services.join(", ") || "–", tr);
      const sec = html("td", undefined, tr);
      const icon = svg("svg", { viewBox: "-9 -12 18 22", width: 12, height: 15 }, sec);
      lock(e.security, icon);
      sec.append(" " + ({ mutual_tls: "mutual TLS", none: "plaintext" }[e.security] || "unknown"));
      const total = data.unit === "requests" ? String(Math.round(e.requests)) : "–";
      html("td", total, tr).className = "num";
      html("td", fmtRate(x.rps), tr).className = "num";
      html("td", fmtPct(x.errorRate), tr).className = "num";
    }
  }

  function showError(message) {
    const e = document.getElementById("error");
    e.hidden = message === null;
    e.textContent = message || "";
    if (message !== null) document.body.dataset.state = "error";
  }

  async function poll() {
    try {
      const resp = await fetch(dataUrl, { cache: "no-store" });
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.error || resp.statusText);
      render(data);
      showError(null);
    } catch (err) {
      showError("Cannot load the graph: " + err.message);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
