// feedloop dashboard: asks /api/snapshot every refresh_s seconds and draws it (SVG, no library).
"use strict";
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#ff7b72", "#39c5cf", "#e3b341", "#8b949e", "#f778ba"];
const SOURCE_COLORS = {user: "#3fb950", segment: "#58a6ff", trending: "#d29922", popular: "#bc8cff", none: "#8b949e"};
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const fmt = (x, digits = 1) => (x === null || x === undefined) ? "–" : Number(x).toLocaleString(undefined, {maximumFractionDigits: digits});

// seconds as a person reads them: 0.84 s, 14 min, 3.2 h, 10.0 d
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return fmt(s, 2) + " s";
  if (s < 7200) return fmt(s / 60, 0) + " min";
  if (s < 172800) return fmt(s / 3600, 1) + " h";
  return fmt(s / 86400, 1) + " d";
}

function table(el, head, rows) {
  el.innerHTML = "<tr>" + head.map(([h, cls]) => `<th class="${cls || ""}">${esc(h)}</th>`).join("") + "</tr>" +
    rows.map((r) => "<tr>" + r.map(([v, cls]) => `<td class="${cls || ""}">${v}</td>`).join("") + "</tr>").join("");
}

function aliasBadges(aliases) {
  return (aliases || []).filter(Boolean).map((a) => `<span class="alias ${esc(a)}">${esc(a)}</span>`).join("");
}

// One panel: its error and staleness; returns the panel's data when it can be drawn.
function panel(snap, name) {
  const p = snap.panels[name] || {ok: false, error: "no data"};
  const el = $("panel-" + name);
  el.classList.toggle("down", !p.ok);
  el.querySelector("[data-error]").textContent = p.ok ? "" : "source down: " + (p.error || "unknown");
  const badge = el.querySelector("[data-badge]");
  badge.className = "badge" + (!p.ok ? " down" : p.stale ? " stale" : "");
  badge.textContent = !p.ok ? "down" : p.stale ? `stale ${fmt(p.age_s, 0)}s` : "";
  return p.ok ? p : null;
}

// Lines over time: points [{t, key: value}], keys to draw; y from 0 to the max.
function lines(svg, points, keys, colors) {
  const W = 600, H = svg.viewBox.baseVal.height || 140;
  if (points.length < 2) { svg.innerHTML = `<text x="8" y="20" fill="#8a96a3" font-size="13">waiting for data…</text>`; return; }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const ymax = Math.max(1e-9, ...points.flatMap((p) => keys.map((k) => p[k] || 0)));
  const x = (t) => (t1 === t0 ? 0 : (t - t0) / (t1 - t0) * (W - 4) + 2);
  const y = (v) => H - 4 - (v / ymax) * (H - 22);
  let out = `<text x="6" y="14" fill="#8a96a3" font-size="12">max ${fmt(ymax, 1)}/s · last ${fmt((t1 - t0) / 60, 1)} min</text>`;
  keys.forEach((k, i) => {
    const d = points.map((p, j) => `${j ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[k] || 0).toFixed(1)}`).join("");
    out += `<path d="${d}" fill="none" stroke="${colors[k] || COLORS[i % COLORS.length]}" stroke-width="1.6" vector-effect="non-scaling-stroke"/>`;
  });
  svg.innerHTML = out;
}

function drawEvents(snap) {
  const p = panel(snap, "events");
  if (!p) return;
  $("events-per-s").textContent = fmt(p.events_per_s);
  $("dlq-per-s").textContent = fmt(p.dlq_per_s, 2);
  const types = Object.keys(p.by_type_per_s);
  const colors = {events_per_s: "#dfe6ee", dlq_per_s: "#f85149"};
  types.forEach((k, i) => { colors[k] = COLORS[i % COLORS.length]; });
  const keys = ["events_per_s", "dlq_per_s", ...types];
  lines($("events-chart"), snap.series.events || [], keys, colors);
  $("events-legend").innerHTML = keys.map((k) => `<span style="color:${colors[k]}">■ ${esc(k === "events_per_s" ? "all valid" : k === "dlq_per_s" ? "DLQ" : k)}</span>`).join("");
  table($("events-by-type"), [["type"], ["events/s", "num"]],
        types.map((k) => [[esc(k)], [fmt(p.by_type_per_s[k]), "num"]]));
  $("events-totals").textContent = `since the sink started: ${fmt(p.total_valid, 0)} valid, ${fmt(p.total_dlq, 0)} to the DLQ; ` +
    `last batch ${p.last_batch} ${fmt(p.last_batch_age_s, 0)}s ago`;
}

function drawFreshness(snap) {
  const p = panel(snap, "freshness");
  if (!p) return;
  $("event-to-redis").textContent = duration(p.event_to_redis_s);
  $("click-to-feed").textContent = duration(p.click_to_feed_s);
  const notes = [];
  if (p.event_to_redis_age_s !== undefined) notes.push(`sink's last batch ${fmt(p.event_to_redis_age_s, 0)}s ago`);
  notes.push(p.click_to_feed_age_s !== undefined ? `learner's last batch ${fmt(p.click_to_feed_age_s, 0)}s ago (${esc(p.learner_reason)})`
                                                 : "online learner: no batch yet (feedloop up stream-learner)");
  $("freshness-note").textContent = notes.join(" · ");
}

function drawLag(snap) {
  const p = panel(snap, "lag");
  if (!p) return;
  table($("lag-table"), [["query"], ["topic"], ["app"], ["lag (records)", "num"], ["topic end", "num"]],
        p.queries.map((q) => [[esc(q.query)], [esc(q.topic)], [esc(q.state)],
                              [q.lag === null ? "no commit yet" : fmt(q.lag, 0), "num"], [fmt(q.end, 0), "num"]]));
}

function drawChampion(snap) {
  const p = panel(snap, "champion");
  if (!p) return;
  $("champion-version").textContent = p.champion ? "v" + p.champion : "none";
  $("online-version").textContent = p.online || "–";
  $("challenger-version").textContent = p.challenger ? "v" + p.challenger : "–";
  const scored = p.versions.filter((v) => v.ndcg10 !== null).reverse();
  const svg = $("ndcg-chart");
  if (scored.length) {
    const W = 600, H = 120, max = Math.max(...scored.map((v) => v.ndcg10)), bw = Math.min(60, (W - 10) / scored.length);
    svg.innerHTML = `<text x="6" y="14" fill="#8a96a3" font-size="12">NDCG@10 by version (max ${fmt(max, 4)})</text>` +
      scored.map((v, i) => {
        const h = (v.ndcg10 / (max || 1)) * (H - 34), color = v.aliases.includes("champion") ? "#3fb950" : v.gate === "champion" ? "#2f7d3d" : "#d29922";
        return `<rect x="${5 + i * bw}" y="${H - 14 - h}" width="${bw - 4}" height="${h}" fill="${color}"/>` +
               `<text x="${5 + i * bw}" y="${H - 2}" fill="#8a96a3" font-size="11">v${esc(v.version)}</text>`;
      }).join("");
  } else {
    svg.innerHTML = `<text x="8" y="20" fill="#8a96a3" font-size="13">no gated version yet</text>`;
  }
  table($("champion-table"), [["version"], ["day"], ["NDCG@10", "num"], ["gate"], ["reason"]],
        p.versions.map((v) => [[`v${esc(v.version)} ${aliasBadges(v.aliases)}`], [esc(v.ds || "")],
                               [v.ndcg10 === null ? "–" : v.ndcg10.toFixed(4), "num"], [esc(v.gate || (v.online_version ? "online" : ""))],
                               [esc(v.reason || v.online_version || ""), "reason"]]));
}

function drawCtr(snap) {
  const p = panel(snap, "ctr");
  if (!p) return;
  if (!p.rows.length) { $("ctr-table").innerHTML = `<tr><td class="muted">no served feed with impressions since ${esc(p.since)} yet</td></tr>`; return; }
  table($("ctr-table"), [["model version"], ["segment"], ["impressions", "num"], ["clicks", "num"], ["CTR", "num"]],
        p.rows.slice(0, 40).map((r) => [[`${esc(r.model_version)} ${aliasBadges([r.alias])}`], [esc(r.segment || "(user feed)")],
                                        [fmt(r.impressions, 0), "num"], [fmt(r.clicks, 0), "num"],
                                        [r.ctr === null ? "–" : (100 * r.ctr).toFixed(2) + "%", "num"]]));
}

function drawSources(snap) {
  const p = panel(snap, "sources");
  if (!p) return;
  $("sources-bar").innerHTML = p.sources.filter((s) => s.share > 0).map((s) =>
    `<div title="${esc(s.source)} ${(100 * s.share).toFixed(1)}%" style="width:${100 * s.share}%;background:${SOURCE_COLORS[s.source] || "#8b949e"}"></div>`).join("");
  table($("sources-table"), [["source"], ["feeds served", "num"], ["share", "num"], ["per s", "num"]],
        p.sources.map((s) => [[`<span style="color:${SOURCE_COLORS[s.source] || "#8b949e"}">■</span> ${esc(s.source)}`],
                              [fmt(s.served, 0), "num"], [(100 * s.share).toFixed(1) + "%", "num"], [fmt(s.per_s, 2), "num"]]));
}

function drawHealth(snap) {
  const p = panel(snap, "health");
  if (!p) return;
  $("health-tiles").innerHTML = p.rows.map((r) =>
    `<div class="tile ${r.healthy ? "" : "bad"}"><div class="name">${esc(r.service)}</div>` +
    `<div class="addr">${r.healthy ? "ok" : "DOWN"} · ${esc(r.state)} · ${esc(r.address)}</div></div>`).join("");
}

let refreshMs = 2000;
let failures = 0;

async function tick() {
  try {
    const resp = await fetch("/api/snapshot", {cache: "no-store"});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const snap = await resp.json();
    refreshMs = 1000 * (snap.refresh_s || 2);
    failures = 0;
    for (const draw of [drawEvents, drawFreshness, drawLag, drawChampion, drawCtr, drawSources, drawHealth]) {
      try { draw(snap); } catch (err) { console.error(draw.name, err); }
    }
    $("links").innerHTML = Object.entries(snap.links).map(([k, v]) => `<a href="${esc(v)}" target="_blank">${esc(k)}</a>`).join("");
    $("status").textContent = "updated " + new Date(snap.generated_at * 1000).toLocaleTimeString();
  } catch (err) {
    failures += 1;
    $("status").textContent = `dashboard server not answering (${err.message}); retrying`;
  }
  setTimeout(tick, refreshMs);
}
tick();
