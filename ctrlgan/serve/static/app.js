// The ctrlgan playground: plain JavaScript, no build step, no network but this server.
//
// The page's whole state lives in its URL query (a shared link reproduces the image); the
// controls are built from the model's metadata (GET v1/models). Every change asks the server
// for one PNG (v1/models/<m>/image.png, grid.png or interpolate.png) at scale 1 and shows it
// enlarged with pixelated scaling. A newer request aborts the older one, so the image shown
// always matches the controls shown. Errors (a bad URL value, 429 from a busy server) appear
// inline; a 429 is retried after its Retry-After.
"use strict";

const $ = (id) => document.getElementById(id);
const KEYS = ["model", "view", "class", "class2", "mix", "seed", "truncation", "steer",
              "classes", "seeds", "from", "to", "steps", "method", "vary"];
const DEFAULTS = { view: "single", class: "0", class2: "", mix: "0.5", seed: "0",
                   truncation: "0", steer: "", classes: "all", seeds: "0-7", from: "5:3",
                   to: "9:7", steps: "8", method: "slerp", vary: "both" };
const DISPLAY = { single: 320, grid: 720, interpolate: 720 };  // target CSS width, px

window.ctrlganTimings = [];
window.ctrlganReady = false;

let models = [];
let state = {};
let inflight = null;      // AbortController of the request being answered
let inputTime = 0;        // performance.now() of the latest input event
let frame = 0;            // requestAnimationFrame id of a scheduled request
let retry = 0;            // setTimeout id of a 429 retry
let objectUrl = null;

// State <-> URL -------------------------------------------------------------------------------
function readUrl() {
  const q = new URLSearchParams(location.search);
  state = { ...DEFAULTS };
  for (const k of KEYS) if (q.has(k)) state[k] = q.get(k);
}

// Values a control cannot show are replaced by what it shows, with a note: the image always
// matches the controls. (Values the controls can show but the server refuses, such as a class
// this model does not have, go to the server and its error is shown.)
function checkUrl() {
  const notes = [];
  if (!VIEW_KEYS[state.view]) {
    notes.push(`view: ${state.view} is not one of single, grid, interpolate; showing single`);
    state.view = "single";
  }
  if (state.model && !models.some((m) => m.name === state.model)) {
    notes.push(`model: this server has no model ${state.model}; showing ${models[0].name}`);
    state.model = models[0].name;
  }
  const clamp = (name, text, lo, hi) => {
    const v = Number(text);
    if (!Number.isFinite(v)) { notes.push(`${name}: ${text} is not a number; using ${lo}`); return String(lo); }
    if (v < lo || v > hi) {
      const c = Math.min(hi, Math.max(lo, v));
      notes.push(`${name}: ${text} is beyond this page's slider (${lo}..${hi}); showing ${c}`);
      return String(c);
    }
    return text;
  };
  state.truncation = clamp("truncation", state.truncation, 0, 2);
  state.mix = clamp("mix", state.mix, 0, 1);
  const steer = steerMap();
  for (const [k, v] of Object.entries(steer)) steer[k] = clamp(`steer.${k}`, v, -3, 3);
  state.steer = steerText(steer);
  return notes;
}

// Every value the current view uses is written, defaults too: a shared link keeps its meaning
// even if a later version changes a default.
const VIEW_KEYS = { single: ["class", "class2", "mix", "seed"], grid: ["classes", "seeds"],
                    interpolate: ["from", "to", "steps", "method", "vary"] };

function writeUrl() {
  const q = new URLSearchParams();
  const keys = ["model", "view", ...(VIEW_KEYS[state.view] || []), "truncation", "steer"];
  for (const k of keys) {
    if (k === "class2" && state.class2 === "") continue;
    if (k === "mix" && state.class2 === "") continue;
    if (k === "truncation" && !(Number(state.truncation) > 0)) continue;
    if (k === "steer" && (!state.steer || state.view === "interpolate")) continue;
    if (state[k] !== undefined && state[k] !== "") q.set(k, state[k]);
  }
  const text = queryText(q);
  history.replaceState(null, "", text ? `?${text}` : location.pathname);
}

// A query as people read it: "steer=thickness:1.5,slant:-1", not "%3A" and "%2C".
function queryText(q) {
  return q.toString().replace(/%3A/g, ":").replace(/%2C/g, ",");
}

function steerText(steer) {  // {feature: alpha} -> "feature:alpha,..." without the zeros
  return Object.entries(steer).filter(([, v]) => Number(v) !== 0)
    .map(([k, v]) => `${k}:${v}`).join(",");
}

function steerMap() {
  const out = {};
  for (const part of (state.steer || "").split(",")) {
    const [name, value] = part.split(":");
    if (name && value !== undefined) out[name] = value;
  }
  return out;
}

// Controls ------------------------------------------------------------------------------------
function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.append(o);
  return o;
}

function currentModel() {
  return models.find((m) => m.name === state.model) || models[0];
}

function buildModelControls() {
  const m = currentModel();
  state.model = m.name;
  for (const id of ["class", "class2", "from-class", "to-class"]) {
    const select = $(id);
    select.replaceChildren();
    if (id === "class2") option(select, "", "(none)");
    m.classes.forEach((name, i) => option(select, String(i), name === String(i) ? name : `${i}: ${name}`));
  }
  const box = $("directions");
  box.replaceChildren();
  for (const feature of m.features) {
    const div = document.createElement("div");
    div.className = "direction";
    const label = document.createElement("label");
    label.htmlFor = `steer-${feature}`;
    label.append(`${feature} `, Object.assign(document.createElement("output"), { textContent: "0.0" }));
    div.append(label);
    const input = document.createElement("input");
    Object.assign(input, { type: "range", id: `steer-${feature}`, min: -3, max: 3, step: 0.1,
                           value: 0 });
    input.dataset.feature = feature;
    const reset = document.createElement("button");
    Object.assign(reset, { type: "button", textContent: "reset" });
    reset.dataset.reset = feature;
    reset.setAttribute("aria-label", `reset ${feature}`);
    div.append(input, reset);
    box.append(div);
    input.addEventListener("input", (e) => { setSteer(feature, input.value); changed(e); });
    reset.addEventListener("click", (e) => { setSteer(feature, "0"); showState(); changed(e); });
  }
  $("reset-all").hidden = m.features.length === 0;
}

// Select ``value`` in a select; a value it does not list (a hand-edited URL) is shown as is,
// so that the server's error about it appears next to it.
function pick(select, value) {
  for (const o of [...select.options]) if (o.dataset.invalid && o.value !== value) o.remove();
  if (![...select.options].some((o) => o.value === value)) {
    option(select, value, `${value} (?)`).dataset.invalid = "1";
  }
  select.value = value;
}

function showState() {
  $("model").value = state.model;
  $("view").value = state.view;
  pick($("class"), state.class);
  pick($("class2"), state.class2);
  $("mix").value = state.mix;
  $("mix-value").textContent = Number(state.mix).toFixed(2);
  $("seed").value = state.seed;
  $("truncation").value = state.truncation;
  $("truncation-value").textContent = Number(state.truncation) > 0 ? state.truncation : "off";
  $("grid-classes").value = state.classes;
  $("grid-seeds").value = state.seeds;
  const [fs, fc] = state.from.split(":");
  const [ts, tc] = state.to.split(":");
  $("from-seed").value = fs;
  pick($("from-class"), fc ?? "0");
  $("to-seed").value = ts;
  pick($("to-class"), tc ?? "0");
  $("steps").value = state.steps;
  $("method").value = state.method;
  $("vary").value = state.vary;
  const steer = steerMap();
  for (const input of $("directions").querySelectorAll("input[type=range]")) {
    const value = steer[input.dataset.feature] ?? "0";
    input.value = value;
    input.previousElementSibling.querySelector("output").textContent = Number(value).toFixed(1);
  }
  for (const view of ["single", "grid", "interpolate"]) {
    $(`${view}-controls`).classList.toggle("hidden", state.view !== view);
  }
  $("steering").classList.toggle("hidden", state.view === "interpolate");  // not a strip's
  $("mix").disabled = state.class2 === "";
}

function setSteer(feature, value) {
  const steer = steerMap();
  steer[feature] = value;
  state.steer = steerText(steer);
  const input = $(`steer-${feature}`);
  if (input) input.previousElementSibling.querySelector("output").textContent =
    Number(value).toFixed(1);
}

function readControls() {
  state.model = $("model").value;
  state.view = $("view").value;
  state.class = $("class").value;
  state.class2 = $("class2").value;
  state.mix = $("mix").value;
  state.seed = $("seed").value;
  state.truncation = $("truncation").value;
  state.classes = $("grid-classes").value.trim();
  state.seeds = $("grid-seeds").value.trim();
  state.from = `${$("from-seed").value}:${$("from-class").value}`;
  state.to = `${$("to-seed").value}:${$("to-class").value}`;
  state.steps = $("steps").value;
  state.method = $("method").value;
  state.vary = $("vary").value;
}

// Requests ------------------------------------------------------------------------------------
function imageQuery() {
  const q = new URLSearchParams();
  const tau = Number(state.truncation) > 0 ? state.truncation : null;
  if (state.view === "single") {
    q.set("class", state.class);
    q.set("seed", state.seed);
    if (state.class2 !== "") { q.set("class2", state.class2); q.set("mix", state.mix); }
  } else if (state.view === "grid") {
    q.set("classes", state.classes);
    q.set("seeds", state.seeds);
  } else {
    for (const k of ["from", "to", "steps", "method", "vary"]) q.set(k, state[k]);
  }
  if (tau) q.set("truncation", tau);
  if (state.steer && state.view !== "interpolate") q.set("steer", state.steer);
  return q;
}

function imagePath(scale) {
  const route = { single: "image.png", grid: "grid.png", interpolate: "interpolate.png" }[state.view];
  const q = imageQuery();
  if (scale > 1) q.set("scale", scale);
  return `v1/models/${encodeURIComponent(state.model)}/${route}?${queryText(q)}`;
}

function changed(event) {
  notes = [];
  inputTime = event && event.timeStamp ? event.timeStamp : performance.now();
  readControls();
  showState();
  writeUrl();
  writeCode();
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; request(); });
}

function headers() {
  const key = sessionStorage.getItem("ctrlgan-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

let wanted = "";  // the path shown or being fetched

async function request() {
  const path = imagePath(1);
  const image = $("image");
  if (path === wanted && image.dataset.state !== "error") return;  // nothing new to show
  wanted = path;
  clearTimeout(retry);
  if (inflight) inflight.abort();
  const controller = new AbortController();
  inflight = controller;
  const start = inputTime || performance.now();
  image.dataset.state = "loading";
  try {
    const response = await fetch(path, { signal: controller.signal, headers: headers() });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      if (controller !== inflight) return;
      if (response.status === 429) {  // a busy server: say so, then try again
        const wait = Number(response.headers.get("Retry-After")) || 1;
        showError(`The server is busy (429): ${message}. Retrying in ${wait} s.`);
        retry = setTimeout(() => { if (controller === inflight) { wanted = ""; request(); } },
                           wait * 1000);
      } else {
        showError(`${response.status}: ${message}`);
      }
      image.dataset.state = "error";
      return;
    }
    const blob = await response.blob();
    if (controller !== inflight) return;
    const url = URL.createObjectURL(blob);
    const shown = new Image();
    shown.src = url;
    await shown.decode();
    if (controller !== inflight) { URL.revokeObjectURL(url); return; }
    image.src = url;
    image.dataset.srcUrl = path;
    const target = DISPLAY[state.view];
    const factor = Math.max(1, Math.floor(target / shown.naturalWidth));
    image.style.setProperty("--display-width", `${shown.naturalWidth * factor}px`);
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = url;
    // the download: the same image at 8x from the server (a blob of this one behind a key,
    // which a plain link cannot send)
    $("download").href = sessionStorage.getItem("ctrlgan-key") ? url : imagePath(8);
    $("download").download = `ctrlgan-${state.view}.png`;
    showError("");
    requestAnimationFrame(() => {
      if (controller !== inflight) return;
      image.dataset.state = "ready";
      window.ctrlganTimings.push({ start, end: performance.now(), url: path });
      window.ctrlganReady = true;
      inflight = null;
    });
  } catch (error) {
    if (error.name === "AbortError") return;
    if (controller !== inflight) return;
    showError(`Cannot reach the server: ${error.message}`);
    image.dataset.state = "error";
  }
}

let notes = [];  // what checkUrl changed, shown until the next change of the controls

function showError(text) {
  const box = $("error");
  box.textContent = [...notes, text].filter(Boolean).join("\n");
  box.hidden = !box.textContent;
}

// Copy as code --------------------------------------------------------------------------------
function pyList(text, names) {
  // "all", "0-9", "1,4,7-9" or class names -> a Python list literal
  if (text === "all") return `list(range(${names.length}))`;
  const out = [];
  for (const part of text.split(",")) {
    const p = part.trim();
    const i = names.indexOf(p);
    const m = /^(\d+)-(\d+)$/.exec(p);
    if (i >= 0 && !/^\d+$/.test(p)) out.push(i);
    else if (m) for (let k = Number(m[1]); k <= Number(m[2]) && out.length < 4096; k++) out.push(k);
    else out.push(Number(p));
  }
  return `[${out.join(", ")}]`;
}

function writeCode() {
  const m = currentModel();
  const name = JSON.stringify(m.name);
  const steer = steerMap();
  const steerPy = Object.keys(steer).length
    ? `, steer={${Object.entries(steer).map(([k, v]) => `${JSON.stringify(k)}: ${v}`).join(", ")}}`
    : "";
  const tau = Number(state.truncation) > 0 ? state.truncation : null;
  const tauPy = tau ? `, truncation=${tau}` : "";
  const steerCli = Object.entries(steer).map(([k, v]) => ` --steer ${k}=${v}`).join("");
  const tauCli = tau ? ` --truncation ${tau}` : "";
  let py, cli;
  if (state.view === "single") {
    const cls = state.class2 !== "" ? `[(${state.class}, ${state.class2}, ${state.mix})]`
                                    : `[${state.class}]`;
    py = `x = g.sample(classes=${cls}, seeds=[${state.seed}]${steerPy}${tauPy})\n` +
         `ctrlgan.save_grid(x, "image.png", scale=8)`;
    cli = state.class2 !== "" ? "# class mixes are a Python and HTTP feature\n" : "";
    cli += `ctrlgan sample ${m.name} --class ${state.class} --n 1 --seed ${state.seed}` +
           `${tauCli}${steerCli} --scale 8 -o image.png`;
  } else if (state.view === "grid") {
    py = `classes, seeds = ${pyList(state.classes, m.classes)}, ${pyList(state.seeds, [])}\n` +
         `x = g.sample(classes=[c for c in classes for _ in seeds], seeds=seeds * len(classes)` +
         `${steerPy}${tauPy})\nctrlgan.save_grid(x, "grid.png", nrow=len(seeds), scale=4)`;
    cli = `# seeds N..N+n-1 per class; the page's seeds: ${state.seeds}\n` +
          `ctrlgan sample ${m.name} --class ${state.classes}${tauCli}${steerCli} -o grid.png`;
  } else {
    const [fs, fc] = state.from.split(":");
    const [ts, tc] = state.to.split(":");
    py = `x = g.interpolate((${fs}, ${fc}), (${ts}, ${tc}), steps=${state.steps}, ` +
         `method="${state.method}", vary="${state.vary}"${tauPy})\n` +
         `ctrlgan.save_grid(x, "strip.png", nrow=${state.steps}, scale=4)`;
    cli = `ctrlgan interpolate ${m.name} --from ${state.from} --to ${state.to} ` +
          `--steps ${state.steps} --method ${state.method} --vary ${state.vary} -o strip.png`;
  }
  $("code-python").textContent = `import ctrlgan\n\ng = ctrlgan.load(${name})\n${py}`;
  $("code-cli").textContent = cli;
  const url = new URL(imagePath(8), document.baseURI).href;
  $("code-curl").textContent = `curl -o ctrlgan.png "${url}"`;
}

async function copy(id) {
  const text = $(id).textContent;
  try { await navigator.clipboard.writeText(text); } catch (e) {
    const range = document.createRange();  // no clipboard (an insecure origin): select it
    range.selectNodeContents($(id));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
}

// Start ---------------------------------------------------------------------------------------
async function start() {
  readUrl();
  const key = $("api-key");
  key.value = sessionStorage.getItem("ctrlgan-key") || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem("ctrlgan-key", key.value);
    init();
  });
  await init();
}

async function init() {
  let doc;
  try {
    const response = await fetch("v1/models", { headers: headers() });
    doc = await response.json();
    if (!response.ok) throw new Error(doc.error || response.statusText);
  } catch (error) {
    showError(`Cannot load the models: ${error.message}`);
    return;
  }
  models = doc.models;
  $("model").replaceChildren();
  for (const m of models) option($("model"), m.name, `${m.name} (${m.backend})`);
  $("model").disabled = models.length < 2;
  notes = checkUrl();
  buildModelControls();
  showState();
  writeUrl();
  writeCode();
  inputTime = performance.now();
  request();
}

function wire() {
  for (const id of ["mix", "truncation"]) $(id).addEventListener("input", changed);
  for (const id of ["class", "class2", "seed", "grid-classes", "grid-seeds", "from-seed",
                    "from-class", "to-seed", "to-class", "steps", "method", "vary"]) {
    $(id).addEventListener("change", changed);
  }
  $("seed").addEventListener("input", changed);
  $("view").addEventListener("change", changed);
  $("model").addEventListener("change", (e) => {
    state.model = $("model").value;
    state.steer = "";
    buildModelControls();
    changed(e);
  });
  const step = (delta) => (e) => {
    $("seed").value = Math.max(0, (Number($("seed").value) || 0) + delta);
    changed(e);
  };
  $("seed-prev").addEventListener("click", step(-1));
  $("seed-next").addEventListener("click", step(1));
  $("seed-random").addEventListener("click", (e) => {
    $("seed").value = Math.floor(Math.random() * 2 ** 31);
    changed(e);
  });
  $("reset-all").addEventListener("click", (e) => {
    state.steer = "";
    showState();
    changed(e);
  });
  for (const kind of ["python", "cli", "curl"]) {
    $(`copy-${kind}`).addEventListener("click", () => copy(`code-${kind}`));
  }
}

wire();
start();
