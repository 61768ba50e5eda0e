// workzone web page: posts each chosen image to the streaming endpoint and draws what comes back.
// Plain browser JavaScript, no dependencies: the page must work offline from the files in the package.
"use strict";

const COLOURS = ["#f76707", "#1c7ed6", "#37b24d", "#ae3ec9", "#f59f00", "#0ca678", "#e03131", "#3b5bdb"];
const KEY_STORE = "workzone.apiKey";
const IMAGE_EXT = /\.(jpe?g|png|webp|bmp|gif|tiff?)$/i;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = { config: null, stageCost: {}, queue: Promise.resolve() };
const $ = (sel, root = document) => root.querySelector(sel);

function mb(bytes) { return bytes < 1048576 ? Math.round(bytes / 1024) + " KB" : (bytes / 1048576).toFixed(1) + " MB"; }
function fmtP(p) { return p === null || p === undefined ? "—" : p.toFixed(3); }

function apiHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text, kind) {
  const el = $("#service-status");
  el.textContent = text;
  el.className = "status " + (kind || "");
}

function pageError(text) {
  const el = $("#page-error");
  el.textContent = text || "";
  el.hidden = !text;
}

// The JSON error body every API error has: {"error": {"type", "message", "status"}}.
async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: a proxy or a crash */ }
  const e = (body && body.error) || {};
  return { status: response.status, type: e.type || "http_error", message: e.message || response.statusText,
           retryAfter: response.headers.get("Retry-After") };
}

function explain(err, name) {
  const what = name ? `“${name}”` : "The request";
  switch (err.status) {
    case 401: return "The API key is missing or wrong: enter a valid key in the API key field above. " +
                     `(service said: ${err.message})`;
    case 413: return `${what} is too large for this service: ${err.message}.`;
    case 415: return `${what} was refused: ${err.message}`;
    case 422: return err.type === "invalid_image"
      ? `${what} is not an image the service can read: ${err.message}`
      : `${what} was refused: ${err.message}`;
    case 429: return `The service is busy (queue full); try again in ${err.retryAfter || "a few"} s.`;
    case 503: return `The service is not ready (${err.type}): ${err.message}` +
                     (err.retryAfter ? ` Try again in ${err.retryAfter} s.` : "");
    case 504: return `${what} ran past its deadline: ${err.message}`;
    default: return `${what} failed (${err.status} ${err.type}): ${err.message}`;
  }
}

async function loadConfig() {
  try {
    const r = await fetch("/ui/config.json");
    if (!r.ok) throw new Error(`GET /ui/config.json answered ${r.status}`);
    state.config = await r.json();
  } catch (exc) {
    pageError(`Cannot reach the workzone service: ${exc.message}`);
    return;
  }
  const c = state.config;
  $("#limits").textContent = `Up to ${mb(c.max_body_bytes)} per image; images longer than ${c.max_image_side} px ` +
    "are scaled down before deciding." + (c.auth_required ? " This service needs an API key." : "");
  await loadPipeline();
}

async function loadPipeline() {
  const c = state.config;
  if (!c) return;
  if (c.auth_required && !$("#api-key").value.trim()) {
    setStatus("enter the API key to use this service", "bad");
    return;
  }
  const r = await fetch(c.pipeline_endpoint, { headers: apiHeaders() });
  if (!r.ok) {
    const err = await errorOf(r);
    setStatus(err.status === 401 ? "API key rejected" : `service answered ${err.status}`, "bad");
    pageError(explain(err));
    return;
  }
  pageError("");
  const p = await r.json();
  state.stageCost = {};
  const tiers = p.tiers.map((t, k) => {
    t.stages.forEach((s) => { state.stageCost[s.name] = s.cost; });
    return `${k + 1}: ${t.name} (${t.stages.map((s) => s.name).join(", ")})`;  // tiers count from 1, as in eval and tune
  });
  $("#pipeline").textContent = `Pipeline “${p.name}”, tiers ${tiers.join(" → ")}`;
  setStatus(p.ready ? "ready" : `service ${p.state}`, p.ready ? "ok" : "bad");
}

function looksLikeImage(file) {
  return file.type ? file.type.startsWith("image/") : IMAGE_EXT.test(file.name);
}

function newCard(file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = file.name;
  card.dataset.state = "pending";
  $("#results").prepend(card);
  return card;
}

function fail(card, text) {
  const el = $(".message", card);
  el.textContent = text;
  el.hidden = false;
  $(".verdict", card).textContent = "no decision";
  card.dataset.state = "error";
}

async function detectFile(file) {
  const card = newCard(file);
  const c = state.config;
  if (!looksLikeImage(file)) {
    $(".figure", card).hidden = true;
    fail(card, `“${file.name}” is not an image (${file.type || "unknown type"}): choose a JPEG, PNG, WebP, BMP, ` +
               "GIF or TIFF file.");
    return;
  }
  if (c && file.size + 1024 > c.max_body_bytes) {  // + room for the multipart envelope
    $(".figure", card).hidden = true;
    fail(card, `“${file.name}” is ${mb(file.size)}; this service accepts at most ${mb(c.max_body_bytes)} per ` +
               "image. Resize or recompress it and try again.");
    return;
  }
  const img = $(".photo", card);
  img.addEventListener("error", () => { $(".figure", card).hidden = true; }, { once: true });  // not decodable here either
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  $(".verdict", card).textContent = "sending…";
  const form = new FormData();
  form.append("image", file, file.name);
  let response;
  try {
    response = await fetch(c ? c.stream_endpoint : "/v1/detect/stream",
                           { method: "POST", headers: apiHeaders(), body: form });
  } catch (exc) {
    fail(card, `Could not reach the service: ${exc.message}`);
    return;
  }
  if (!response.ok) {
    fail(card, explain(await errorOf(response), file.name));
    return;
  }
  $(".verdict", card).textContent = "deciding…";
  await readStream(response, card, file.name);
}

async function readStream(response, card, name) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      onEvent(card, name, event, JSON.parse(data.join("\n") || "null"));
    }
  }
  if (card.dataset.state === "pending") fail(card, "The stream ended before a decision arrived.");
}

function onEvent(card, name, event, data) {
  if (event === "tier") {
    const li = document.createElement("li");
    li.className = "tier" + (data.decided ? " decided" : "");
    li.textContent = `tier ${data.tier + 1} “${data.tier_name}”: P(road work) ${fmtP(data.probability)} after ` +
      `${data.stages.join(", ")}; declared cost so far ${data.cost.toFixed(1)} ms — ` +
      (data.decided ? `decided (${data.reason})` : "not sure yet, next tier");
    $(".tiers", card).append(li);
    $(".verdict", card).textContent = `P(road work) ${fmtP(data.probability)} so far…`;
  } else if (event === "decision") {
    showDecision(card, data);
  } else if (event === "error") {
    fail(card, explain({ status: data.status, type: data.type, message: data.message }, name));
  }
}

function showDecision(card, d) {
  const verdict = $(".verdict", card);
  verdict.textContent = `${d.label ? "ROAD WORK" : "no road work"} — P(road work) ${fmtP(d.probability)}, ` +
    `decided after tier “${d.exit_tier_name}” (${d.reason}), ${d.latency_ms.toFixed(0)} ms, ` +
    `declared cost ${d.cost.toFixed(1)} ms (the sum of the pipeline's stage costs, not a measured time)`;
  verdict.className = "verdict " + (d.label ? "work" : "none");
  const body = $("tbody", card);
  d.stages.forEach((s, k) => {
    const ev = s.evidence;
    const said = ev.texts.slice(0, 3).map((t) => `“${t.text}”` + (t.matched ? ` ~ ${t.matched}` : ""))
      .concat(ev.notes.slice(0, 2));
    const tr = document.createElement("tr");
    const cost = state.stageCost[s.stage];
    const cells = [s.stage, s.kind, String(s.tier + 1), s.error ? "failed" : fmtP(s.probability),
                   s.latency_ms.toFixed(1), cost === undefined ? "—" : cost.toFixed(1),
                   s.error ? `failed: ${s.error}` : said.join("; ")];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 0) {
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = COLOURS[k % COLOURS.length];
        td.append(sw);
      }
      td.append(text);
      if (s.error && i >= 3) td.className = "failed";
      tr.append(td);
    });
    body.append(tr);
  });
  $("table.stages", card).hidden = false;
  const img = $(".photo", card);
  const draw = () => drawEvidence(card, d, img.naturalWidth, img.naturalHeight);
  if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw, { once: true });
  card.dataset.state = "done";
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// Evidence is in pixels of the image as the service decoded it: the original, scaled down to
// max_image_side when longer. The overlay's viewBox is that size, so boxes land where they belong.
function drawEvidence(card, d, width, height) {
  const side = state.config ? state.config.max_image_side : 0;
  const scale = side && Math.max(width, height) > side ? side / Math.max(width, height) : 1;
  const svg = $(".overlay", card);
  svg.setAttribute("viewBox", `0 0 ${width * scale} ${height * scale}`);
  const legend = $(".legend", card);
  d.stages.forEach((s, k) => {
    const colour = COLOURS[k % COLOURS.length];
    let boxes = 0;
    for (const b of s.evidence.boxes) {
      const geo = { x: b.x1, y: b.y1, width: b.x2 - b.x1, height: b.y2 - b.y1 };
      if (b.label === "roadwork-tile") {
        svg.append(svgEl("rect", { ...geo, class: "heat", fill: "#ff0000", "fill-opacity": (0.4 * b.score).toFixed(2) }));
        continue;
      }
      boxes += 1;
      const rect = svgEl("rect", { ...geo, class: "box", fill: "none", stroke: colour,
                                   "stroke-width": Math.max(2, 2 / scale), "vector-effect": "non-scaling-stroke" });
      rect.append(svgEl("title", {}, `${s.stage}: ${b.label} ${b.score.toFixed(2)}`));
      svg.append(rect);
      svg.append(svgEl("text", { x: b.x1 + 2, y: Math.max(12, b.y1 - 3), fill: colour },
                       `${b.label} ${b.score.toFixed(2)}`));
    }
    for (const t of s.evidence.texts) {
      if (!t.box) continue;
      const [x1, y1, x2, y2] = t.box;
      svg.append(svgEl("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, class: "text-box", fill: "none",
                                 stroke: colour, "stroke-dasharray": "4 3", "vector-effect": "non-scaling-stroke" }));
      svg.append(svgEl("text", { x: x1, y: y2 + 13, fill: colour }, `“${t.text}”`));
    }
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colour;
    const tiles = s.evidence.boxes.length - boxes;
    li.append(sw, `${s.stage}: ${boxes} box(es)` + (tiles ? `, ${tiles} tile(s) lit` : "") +
                  (s.evidence.texts.length ? `, ${s.evidence.texts.length} text(s) read` : ""));
    legend.append(li);
  });
}

function enqueue(files) {
  // One image at a time: the service batches on its side, and the page stays within its queue limits.
  for (const file of files) state.queue = state.queue.then(() => detectFile(file)).catch((exc) => pageError(String(exc)));
}

function init() {
  const key = $("#api-key");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) localStorage.setItem(KEY_STORE, key.value.trim()); else localStorage.removeItem(KEY_STORE);
    loadPipeline();
  });
  $("#forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    key.value = "";
    loadPipeline();
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    enqueue(Array.from(e.dataTransfer.files));
  });
  $("#files").addEventListener("change", (e) => { enqueue(Array.from(e.target.files)); e.target.value = ""; });
  loadConfig();
}

document.addEventListener("DOMContentLoaded", init);
