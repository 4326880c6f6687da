// The page to try every model: pick an image, pick an endpoint and a model, see the answer drawn on the image.
//
// It talks only to the contract's routes on its own origin: GET /models (the models, and the endpoints from the
// service's task registry) and the image endpoints it lists, with the same multipart requests the README's curl
// commands send, and shows that curl command.
// Every piece of text that comes from the service (model names, labels, errors) goes into the page with
// textContent or canvas fillText, never as HTML: a label may be any string.

// Filled from GET /models: { path, title, tasks } per image endpoint of the service's task registry.
let ENDPOINTS = [];
const TASK_TITLES = {
  classification: "Classification",
  detection: "Detection",
  semantic_segmentation: "Semantic segmentation",
  instance_segmentation: "Instance segmentation",
  autoencoder: "Autoencoder (denoising, anomaly)",
};
// Class colours: the service's own palette for the first classes (service/codecs.py), then golden-angle hues.
const PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]];
const STATUS_WORDS = {
  400: "The service could not use this request",
  404: "Unknown model",
  413: "Too large",
  422: "Invalid request",
  503: "Model not available",
};

const $ = (id) => document.getElementById(id);
const state = { models: [], image: null, seq: 0, objectUrls: [] };

// ---------- small DOM helpers (text only) ----------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function colour(index) {
  if (index < PALETTE.length) return PALETTE[index];
  const hue = (index * 137.508) % 360;
  const c = 0.7 * 0.9;
  const x = c * (1 - Math.abs(((hue / 60) % 2) - 1));
  const m = 0.7 - c / 2;
  const [r, g, b] = [[c, x, 0], [x, c, 0], [0, c, x], [0, x, c], [x, 0, c], [c, 0, x]][Math.floor(hue / 60) % 6];
  return [r, g, b].map((v) => Math.round((v + m) * 255));
}
const css = ([r, g, b], a = 1) => `rgba(${r}, ${g}, ${b}, ${a})`;
const percent = (p) => `${(100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 0 : 1)} %`;
const formatNumber = (n) => n.toLocaleString("en-US");

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

function b64Blob(base64, type = "image/png") {
  const bytes = Uint8Array.from(atob(base64), (ch) => ch.charCodeAt(0));
  return new Blob([bytes], { type });
}

// Pixel values exactly as stored (no colour management): class-index masks must decode to their indices.
const rawBitmap = (blob) => createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });

function pixels(bitmap) {
  const canvas = el("canvas", { width: bitmap.width, height: bitmap.height });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

// ---------- models ----------

async function loadModels() {
  const tables = $("model-tables");
  let body;
  try {
    const response = await fetch("models");
    body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  } catch (err) {
    tables.replaceChildren(el("p", { className: "error-text", text: `Could not read /models: ${err.message}` }));
    return;
  }
  state.models = body.models;
  ENDPOINTS = (body.endpoints || []).map((e) => ({
    path: e.route.replace(/^\//, ""), title: e.title, tasks: e.tasks, defaultModel: e.default_model,
  }));
  renderModelTables();
  renderEndpoints();
}

function renderModelTables() {
  const byTask = new Map();
  for (const model of state.models) {
    const task = model.task || "unknown";
    if (!byTask.has(task)) byTask.set(task, []);
    byTask.get(task).push(model);
  }
  const order = [...Object.keys(TASK_TITLES), ...[...byTask.keys()].filter((t) => !(t in TASK_TITLES))];
  const tables = [];
  for (const task of order) {
    const models = byTask.get(task);
    if (!models) continue;
    const head = el("tr", {}, ...["Model", "Precision", "Providers", "Input", "Weights", "Ready"].map(
      (h) => el("th", { scope: "col", text: h })));
    const rows = models.map((m) => el("tr", { dataset: { model: m.name, ready: String(m.ready) } },
      el("th", { scope: "row", text: m.name }),
      el("td", { text: m.precision || "" }),
      el("td", { text: (m.providers || []).map((p) => p.replace("ExecutionProvider", "")).join(", ") }),
      el("td", { text: m.input_size ? m.input_size.join("×") : "any" }),
      el("td", { text: m.source || "" }),
      el("td", { className: m.ready ? "ready" : "not-ready", text: m.ready ? "✓ ready" : `✗ ${m.error || "not ready"}` }),
    ));
    tables.push(el("table", { dataset: { task } },
      el("caption", { text: TASK_TITLES[task] || (task === "unknown" ? "Not loaded (task unknown)" : task) }),
      el("thead", {}, head), el("tbody", {}, ...rows)));
  }
  if (!tables.length) tables.push(el("p", { className: "hint", text: "No models are configured." }));
  $("model-tables").replaceChildren(...tables);
}

const modelsFor = (endpoint) => state.models.filter((m) => endpoint.tasks.includes(m.task));
const currentEndpoint = () =>
  ENDPOINTS.find((e) => e.path === document.querySelector('input[name="endpoint"]:checked')?.value);

function renderEndpoints() {
  const previous = currentEndpoint()?.path;
  const fieldset = $("endpoints");
  const legend = fieldset.querySelector("legend");
  const options = ENDPOINTS.map((endpoint) => {
    const count = modelsFor(endpoint).length;
    const input = el("input", { type: "radio", name: "endpoint", id: `endpoint-${endpoint.path}`, value: endpoint.path });
    input.disabled = count === 0;
    return el("div", { className: "radio" }, input,
      el("label", { for: input.id },
        el("span", { text: endpoint.title }), " ",
        el("code", { text: `/${endpoint.path}` }),
        count === 0 ? el("span", { className: "hint", text: " — no model loaded" }) : null));
  });
  fieldset.replaceChildren(legend, ...options);
  const firstUsable = ENDPOINTS.find((e) => modelsFor(e).some((m) => m.ready)) || ENDPOINTS.find((e) => modelsFor(e).length);
  const pick = ENDPOINTS.find((e) => e.path === previous && modelsFor(e).length) || firstUsable;
  if (pick) $(`endpoint-${pick.path}`).checked = true;
  renderModelSelect();
}

function renderModelSelect() {
  const endpoint = currentEndpoint();
  const select = $("model");
  const previous = select.value;
  const groups = [];
  for (const task of endpoint ? endpoint.tasks : []) {
    const models = state.models.filter((m) => m.task === task);
    if (!models.length) continue;
    groups.push(el("optgroup", { label: TASK_TITLES[task] || task }, ...models.map((m) =>
      el("option", { value: m.name, text: m.ready ? m.name : `${m.name} (not ready)` }))));
  }
  // Models that failed to load have no known task: offered everywhere, so their 503 and its reason can be seen.
  const unplaced = state.models.filter((m) => !(m.task in TASK_TITLES));
  if (endpoint && unplaced.length) {
    groups.push(el("optgroup", { label: "Not loaded" },
      ...unplaced.map((m) => el("option", { value: m.name, text: `${m.name} (not ready)` }))));
  }
  select.replaceChildren(...groups);
  const names = endpoint ? [...modelsFor(endpoint), ...unplaced].map((m) => m.name) : [];
  const ready = endpoint ? modelsFor(endpoint).filter((m) => m.ready).map((m) => m.name) : [];
  // The service's default for the endpoint (what a request naming no model gets), unless the person chose one.
  const preferred = endpoint && names.includes(endpoint.defaultModel) ? endpoint.defaultModel : ready[0];
  select.value = names.includes(previous) ? previous : preferred || names[0] || "";
  select.disabled = names.length === 0;
  for (const field of document.querySelectorAll("[data-for]")) field.hidden = field.dataset.for !== endpoint?.path;
  updateRunButton();
}

// ---------- the image ----------

async function setImage(blob, name) {
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    bitmap = null; // the browser cannot show it; the service still gets it and says what it thinks
  }
  state.image = { blob, name: name || "image", bitmap };
  const size = blob.size < 1024 ? `${blob.size} bytes` : `${formatNumber(Math.round(blob.size / 1024))} kB`;
  $("image-name").textContent = bitmap
    ? `${state.image.name} — ${bitmap.width}×${bitmap.height}, ${size}`
    : `${state.image.name} — ${size}; this browser cannot display it`;
  $("add-noise").disabled = !bitmap;
  updateRunButton();
  await run();
}

async function loadSample(name) {
  const response = await fetch(`static/samples/${name}`);
  if (!response.ok) return showError(`The sample ${name} is missing (HTTP ${response.status}).`);
  await setImage(await response.blob(), name);
}

function gaussian() {
  let u = 0;
  while (u === 0) u = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

// Gaussian noise of standard deviation σ on [0, 1] pixels, clipped; a grey image stays grey.
async function addNoise() {
  const { bitmap, name } = state.image || {};
  if (!bitmap) return;
  const sigma = Number($("noise-sigma").value) * 255;
  const canvas = el("canvas", { width: bitmap.width, height: bitmap.height });
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const image = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  const d = image.data;
  let grey = true;
  for (let i = 0; i < d.length && grey; i += 4) grey = d[i] === d[i + 1] && d[i] === d[i + 2];
  for (let i = 0; i < d.length; i += 4) {
    if (grey) {
      const v = d[i] + sigma * gaussian();
      d[i] = d[i + 1] = d[i + 2] = v;
    } else {
      for (let c = 0; c < 3; c++) d[i + c] = d[i + c] + sigma * gaussian();
    }
  }
  ctx.putImageData(image, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  await setImage(blob, `noisy-${name.replace(/\.[^.]*$/, "")}.png`);
}

function updateRunButton() {
  $("run").disabled = !state.image || !$("model").value;
}

// ---------- requests ----------

function shellQuote(text) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
}

function curlCommand(endpoint, fields, filename) {
  const parts = ["curl", "-F", shellQuote(`image=@${filename}`)];
  for (const [key, value] of fields) parts.push("-F", shellQuote(`${key}=${value}`));
  if (endpoint.path === "denoise") parts.push("-o", "denoised.png");
  parts.push(shellQuote(new URL(endpoint.path, location.href).href));
  return parts.join(" ");
}

function errorMessage(status, text) {
  let detail = text;
  try {
    detail = JSON.parse(text).error ?? text;
  } catch {
    // not JSON: show the body as it is
  }
  const word = STATUS_WORDS[status] || (status >= 500 ? "The service failed" : "The request was refused");
  return `${word} (HTTP ${status}): ${String(detail || "no details").slice(0, 500)}`;
}

function setState(name) {
  const result = $("result");
  result.dataset.state = name;
  result.setAttribute("aria-busy", String(name === "busy"));
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  $("status").textContent = "";
  setState("error");
}

async function run() {
  const endpoint = currentEndpoint();
  const model = $("model").value;
  if (!state.image || !endpoint || !model) return;
  const fields = [["model", model]];
  if (endpoint.path === "classify") fields.push(["top_k", String(Math.max(1, Number($("top-k").value) || 5))]);
  if (endpoint.path === "anomaly") fields.push(["heatmap", "true"]);
  const form = new FormData();
  form.append("image", state.image.blob, state.image.name);
  for (const [key, value] of fields) form.append(key, value);

  const seq = ++state.seq;
  const result = $("result");
  result.dataset.seq = String(seq);
  result.dataset.endpoint = endpoint.path;
  setState("busy");
  $("status").textContent = `Sending ${state.image.name} to /${endpoint.path} (${model})…`;
  $("error").hidden = true;

  const start = performance.now();
  let response;
  let body;
  try {
    response = await fetch(endpoint.path, { method: "POST", body: form });
    body = response.ok && endpoint.path === "denoise" ? await response.blob() : await response.text();
  } catch (err) {
    if (seq === state.seq) showError(`Could not reach the service (${err.message}). Is it still running?`);
    return;
  }
  if (seq !== state.seq) return; // a newer request was sent meanwhile
  const latency = performance.now() - start;

  for (const url of state.objectUrls.splice(0)) URL.revokeObjectURL(url);
  $("latency").textContent = `${latency.toFixed(0)} ms (HTTP ${response.status}, measured in the browser)`;
  $("curl").textContent = curlCommand(endpoint, fields, state.image.name);
  $("request-info").hidden = false;
  $("copy-curl").textContent = "Copy";

  if (!response.ok) {
    $("view").replaceChildren();
    $("raw").hidden = true;
    showError(errorMessage(response.status, body));
    return;
  }
  let answer = null;
  if (endpoint.path !== "denoise") {
    answer = JSON.parse(body);
    $("raw-json").textContent = JSON.stringify(answer, (key, value) =>
      typeof value === "string" && value.length > 120 ? `${value.slice(0, 24)}… (${formatNumber(value.length)} characters of base64)` : value, 2);
  }
  $("raw").hidden = answer === null;
  try {
    const render = { classify: renderClassify, detect: renderDetect, segment: renderSegment,
      denoise: renderDenoise, anomaly: renderAnomaly }[endpoint.path];
    await render(answer ?? body);
  } catch (err) {
    showError(`The answer could not be drawn: ${err.message}`);
    return;
  }
  if (seq !== state.seq) return;
  $("status").textContent = `/${endpoint.path} answered in ${latency.toFixed(0)} ms.`;
  setState("done");
}

// ---------- drawing ----------

// A canvas showing the current image scaled to fit (small images enlarged with crisp pixels); the answer's size
// stands in when the browser cannot display the image itself.
function imageCanvas(width, height, maxWidth = 560, maxHeight = 420) {
  const scale = Math.min(maxWidth / width, maxHeight / height);
  const canvas = el("canvas", { width: Math.round(width * scale), height: Math.round(height * scale) });
  canvas.setAttribute("role", "img");
  const draw = (ctx) => {
    ctx.imageSmoothingEnabled = scale < 2;
    if (state.image.bitmap) ctx.drawImage(state.image.bitmap, 0, 0, canvas.width, canvas.height);
    else {
      ctx.fillStyle = "#ddd";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
  };
  return { canvas, scale, draw };
}

function slider(id, labelText, value, onInput) {
  const input = el("input", { id, type: "range", min: "0", max: "1", step: "0.01", value: String(value) });
  const output = el("output", { for: id, text: Number(value).toFixed(2) });
  input.addEventListener("input", () => {
    output.textContent = Number(input.value).toFixed(2);
    onInput(Number(input.value));
  });
  return el("div", { className: "slider" }, el("label", { for: id, text: labelText }), input, output);
}

function figure(caption, media) {
  return el("figure", {}, media, el("figcaption", { text: caption }));
}

function renderClassify(answer) {
  const { canvas, draw } = imageCanvas(state.image.bitmap?.width || 1, state.image.bitmap?.height || 1, 224, 224);
  canvas.setAttribute("aria-label", "the image sent");
  draw(canvas.getContext("2d"));
  const bars = el("ol", { className: "bars", id: "predictions" }, ...answer.predictions.map((p) => {
    const fill = el("span", { className: "fill" });
    fill.style.width = `${Math.max(0.5, 100 * p.score)}%`;
    return el("li", { dataset: { index: String(p.index), score: String(p.score) } },
      el("span", { className: "label", text: p.label }),
      el("span", { className: "bar", "aria-hidden": "true" }, fill),
      el("span", { className: "score", text: percent(p.score) }));
  }));
  $("view").replaceChildren(el("div", { className: "side-by-side" },
    figure("input", canvas), el("div", { className: "classes" }, el("h3", { text: `Top ${answer.predictions.length} of ${answer.model}` }), bars)));
}

function drawBoxes(ctx, items, scale, threshold) {
  const shown = items.filter((d) => d.score >= threshold);
  ctx.lineWidth = 2;
  ctx.font = "13px sans-serif";
  ctx.textBaseline = "top";
  for (const d of shown) {
    const rgb = colour(d.index + 1);
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    ctx.strokeStyle = css(rgb);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const tag = `${d.label} ${d.score.toFixed(2)}`;
    const w = ctx.measureText(tag).width + 6;
    const ty = y1 >= 17 ? y1 - 17 : y1;
    ctx.fillStyle = css(rgb);
    ctx.fillRect(x1 - 1, ty, w, 17);
    ctx.fillStyle = rgb[0] * 0.3 + rgb[1] * 0.59 + rgb[2] * 0.11 > 140 ? "#000" : "#fff";
    ctx.fillText(tag, x1 + 2, ty + 2);
  }
  return shown.length;
}

function detectionList(items) {
  return el("ol", { className: "detections", id: "detections" }, ...items.map((d) => el("li",
    { dataset: { score: String(d.score) } },
    el("span", { className: "swatch", "aria-hidden": "true" }),
    el("span", { className: "label", text: d.label }),
    el("span", { className: "score", text: d.score.toFixed(3) }),
    el("span", { className: "box", text: `[${d.box.map((v) => v.toFixed(0)).join(", ")}]` }))));
}

function paintSwatches(list, items) {
  list.querySelectorAll(".swatch").forEach((s, i) => { s.style.background = css(colour(items[i].index + 1)); });
}

function renderDetect(answer) {
  const items = answer.detections;
  const { canvas, scale, draw } = imageCanvas(answer.width, answer.height);
  canvas.id = "answer-canvas";
  const list = detectionList(items);
  paintSwatches(list, items);
  const summary = el("p", { className: "summary" });
  const redraw = (threshold) => {
    const ctx = canvas.getContext("2d");
    draw(ctx);
    const n = drawBoxes(ctx, items, scale, threshold);
    canvas.dataset.drawn = String(n);
    canvas.setAttribute("aria-label", `the image with ${n} detected objects`);
    list.querySelectorAll("li").forEach((li) => { li.hidden = Number(li.dataset.score) < threshold; });
    summary.textContent = `${n} of ${items.length} objects shown`;
  };
  redraw(0);
  $("view").replaceChildren(canvas,
    slider("score-filter", "Minimum score (filters in the page)", 0, redraw), summary, list);
}

async function renderSegment(answer) {
  if (answer.kind === "instance") return renderInstances(answer);
  const mask = pixels(await rawBitmap(b64Blob(answer.mask)));
  const counts = new Map();
  const overlay = new ImageData(mask.width, mask.height);
  for (let i = 0; i < mask.data.length; i += 4) {
    const index = mask.data[i];
    counts.set(index, (counts.get(index) || 0) + 1);
    if (index === 0) continue; // background stays clear, as in the service's own overlay
    const [r, g, b] = colour(index);
    overlay.data.set([r, g, b, 255], i);
  }
  const layer = el("canvas", { width: mask.width, height: mask.height });
  layer.getContext("2d").putImageData(overlay, 0, 0);

  const { canvas, scale, draw } = imageCanvas(answer.width, answer.height);
  canvas.id = "answer-canvas";
  canvas.setAttribute("aria-label", "the image with the segmentation mask over it");
  const redraw = (opacity) => {
    const ctx = canvas.getContext("2d");
    draw(ctx);
    ctx.globalAlpha = opacity;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(layer, 0, 0, mask.width * scale, mask.height * scale);
    ctx.globalAlpha = 1;
    canvas.dataset.opacity = String(opacity);
  };
  redraw(0.5);
  canvas.dataset.overlay = "semantic";
  const total = mask.width * mask.height;
  const legend = el("ul", { className: "legend", id: "legend" }, ...answer.classes.map((c) => {
    const swatch = el("span", { className: "swatch", "aria-hidden": "true" });
    swatch.style.background = c.index === 0 ? "transparent" : css(colour(c.index));
    const decoded = counts.get(c.index) || 0;
    return el("li", { dataset: { index: String(c.index), pixels: String(decoded) } }, swatch,
      el("span", { className: "label", text: c.label }),
      el("span", { className: "pixels", text: `${formatNumber(decoded)} px (${percent(decoded / total)})` }));
  }));
  $("view").replaceChildren(canvas, slider("mask-opacity", "Mask opacity", 0.5, redraw), legend);
}

async function renderInstances(answer) {
  const items = answer.instances;
  const layers = await Promise.all(items.map(async (inst, i) => {
    const mask = pixels(await rawBitmap(b64Blob(inst.mask)));
    const [r, g, b] = colour(i + 1);
    const paint = new ImageData(mask.width, mask.height);
    for (let p = 0; p < mask.data.length; p += 4) if (mask.data[p] > 127) paint.data.set([r, g, b, 255], p);
    const layer = el("canvas", { width: mask.width, height: mask.height });
    layer.getContext("2d").putImageData(paint, 0, 0);
    return layer;
  }));
  const { canvas, scale, draw } = imageCanvas(answer.width, answer.height);
  canvas.id = "answer-canvas";
  const list = detectionList(items);
  list.querySelectorAll(".swatch").forEach((s, i) => { s.style.background = css(colour(i + 1)); });
  const summary = el("p", { className: "summary" });
  let threshold = 0;
  let opacity = 0.5;
  const redraw = () => {
    const ctx = canvas.getContext("2d");
    draw(ctx);
    ctx.globalAlpha = opacity;
    items.forEach((inst, i) => {
      if (inst.score >= threshold) ctx.drawImage(layers[i], 0, 0, answer.width * scale, answer.height * scale);
    });
    ctx.globalAlpha = 1;
    const n = drawBoxes(ctx, items.map((inst, i) => ({ ...inst, index: i })), scale, threshold);
    canvas.dataset.drawn = String(n);
    canvas.dataset.overlay = "instance";
    canvas.setAttribute("aria-label", `the image with ${n} object masks`);
    list.querySelectorAll("li").forEach((li) => { li.hidden = Number(li.dataset.score) < threshold; });
    summary.textContent = `${n} of ${items.length} instances shown`;
  };
  redraw();
  $("view").replaceChildren(canvas,
    slider("score-filter", "Minimum score (filters in the page)", 0, (v) => { threshold = v; redraw(); }),
    slider("mask-opacity", "Mask opacity", 0.5, (v) => { opacity = v; redraw(); }), summary, list);
}

function pictureOf(blob, alt, width) {
  const img = el("img", { src: objectUrl(blob), alt });
  if (width) {
    const scale = Math.min(270 / width, 270 / (state.image.bitmap?.height || width));
    img.width = Math.round(width * scale);
    if (scale >= 2) img.className = "pixelated";
  }
  return img;
}

function renderDenoise(blob) {
  const width = state.image.bitmap?.width;
  const input = pictureOf(state.image.blob, "the image sent", width);
  const output = pictureOf(blob, "the image as the autoencoder reconstructs it", width);
  output.id = "denoised";
  const download = el("a", { href: output.src, download: "denoised.png", text: "Download the denoised PNG" });
  $("view").replaceChildren(el("div", { className: "side-by-side" }, figure("input", input), figure("denoised", output)),
    el("p", { className: "hint" }, "Try it on a clean image with “Add noise” (left). ", download));
}

function renderAnomaly(answer) {
  const width = state.image.bitmap?.width;
  const figures = [figure("input", pictureOf(state.image.blob, "the image sent", width))];
  if (answer.heatmap) {
    const heat = pictureOf(b64Blob(answer.heatmap), "per-pixel reconstruction error", width);
    figures.push(figure("reconstruction error", heat));
  }
  const top = Math.max(answer.score, answer.threshold) * 1.25;
  const fill = el("span", { className: "fill" });
  fill.style.width = `${(100 * answer.score) / top}%`;
  const mark = el("span", { className: "threshold-mark" });
  mark.style.left = `${(100 * answer.threshold) / top}%`;
  const verdict = answer.is_anomaly ? "anomalous" : "normal";
  const ratio = answer.score / answer.threshold;
  $("view").replaceChildren(el("div", { className: "side-by-side" }, ...figures),
    el("p", { className: `verdict ${verdict}`, id: "verdict", text: answer.is_anomaly ? "Anomalous" : "Normal" }),
    el("div", { className: `meter ${verdict}`, role: "img",
      "aria-label": `score ${answer.score} against threshold ${answer.threshold}` }, fill, mark),
    el("p", { className: "summary", text: `score ${answer.score.toPrecision(3)} ${answer.is_anomaly ? "is above" : "is within"} `
      + `the threshold ${answer.threshold.toPrecision(3)} (${ratio.toFixed(2)}× the threshold)` }));
}

// ---------- wiring ----------

function imageFrom(items) {
  for (const item of items || []) {
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && (file.type.startsWith("image/") || file.type === "")) return file;
  }
  return null;
}

function init() {
  $("endpoints").addEventListener("change", () => { renderModelSelect(); run(); });
  $("model").addEventListener("change", run);
  $("top-k").addEventListener("change", run);
  $("run").addEventListener("click", run);
  $("refresh-models").addEventListener("click", loadModels);
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setImage(file, file.name);
  });
  for (const button of document.querySelectorAll("[data-sample]")) {
    button.addEventListener("click", () => loadSample(button.dataset.sample));
  }
  $("noise-sigma").addEventListener("input", (e) => { $("noise-sigma-value").textContent = Number(e.target.value).toFixed(2); });
  $("add-noise").addEventListener("click", addNoise);
  $("copy-curl").addEventListener("click", async () => {
    const text = $("curl").textContent;
    try {
      await navigator.clipboard.writeText(text);
      $("copy-curl").textContent = "Copied";
    } catch {
      getSelection().selectAllChildren($("curl")); // no clipboard access (plain http): select it for Ctrl+C
      $("copy-curl").textContent = "Selected — press Ctrl+C";
    }
  });
  document.addEventListener("paste", (event) => {
    const file = imageFrom(event.clipboardData?.items);
    if (file) {
      event.preventDefault();
      setImage(file, file.name || "pasted.png");
    }
  });
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const file = imageFrom(event.dataTransfer?.files);
    if (file) setImage(file, file.name);
  });
  loadModels();
}

init();
