// The page to try every model: pick an image, pick an endpoint and a model, see the answer drawn on the image.
//
// It talks only to the contract's routes on its own origin: GET /models (the models, and the endpoints from the
// service's task registry, with the files each takes) and the endpoints it lists, with the same multipart
// requests the README's curl commands send, and shows that curl command. /inpaint gets a mask painted with the
// mouse here; /generate takes no image at all.
// Every piece of text that comes from the service (model names, labels, errors) goes into the page with
// textContent or canvas fillText, never as HTML: a label may be any string.

// Filled from GET /models: { path, title, tasks, files } per endpoint of the service's task registry.
let ENDPOINTS = [];
const TASK_TITLES = {
  classification: "Classification",
  detection: "Detection",
  semantic_segmentation: "Semantic segmentation",
  instance_segmentation: "Instance segmentation",
  autoencoder: "Autoencoder (denoising, anomaly, embedding)",
  inpainting: "Inpainting",
  generation: "Generation",
};
// Answers that are images (PNG bytes), not JSON: the file name the curl command writes them to.
const IMAGE_ANSWERS = new Map([["denoise", "denoised.png"], ["inpaint", "inpainted.png"]]);
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
const state = { models: [], image: null, seq: 0, objectUrls: [], mask: null };

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
    files: e.files || [{ name: "image", required: true }],
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
const takesImage = (endpoint) => endpoint.files.some((f) => f.name === "image");
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
  $("image-input").hidden = endpoint ? !takesImage(endpoint) : false;
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
  state.mask = null; // a painted hole belongs to the image it was painted on
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
  const endpoint = currentEndpoint();
  $("run").disabled = !$("model").value || (!state.image && (!endpoint || takesImage(endpoint)));
}

// ---------- requests ----------

function shellQuote(text) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
}

function curlCommand(endpoint, fields, files) {
  const parts = ["curl"];
  for (const [key, filename] of files) parts.push("-F", shellQuote(`${key}=@${filename}`));
  for (const [key, value] of fields) parts.push("-F", shellQuote(`${key}=${value}`));
  if (IMAGE_ANSWERS.has(endpoint.path)) parts.push("-o", IMAGE_ANSWERS.get(endpoint.path));
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

// The fields each endpoint sends besides the model (what its curl command shows too).
function fieldsFor(endpoint, model) {
  const info = state.models.find((m) => m.name === model);
  const fields = [];
  if (endpoint.path === "classify") fields.push(["top_k", String(Math.max(1, Number($("top-k").value) || 5))]);
  if (endpoint.path === "anomaly") fields.push(["heatmap", "true"]);
  if (endpoint.path === "embed" && info?.gallery) {
    fields.push(["neighbors", String(Math.min(50, Math.max(1, Number($("neighbor-count").value) || 8)))], ["map", "true"]);
  }
  if (endpoint.path === "generate") {
    fields.push(["count", String(Math.min(64, Math.max(1, Number($("count").value) || 16)))]);
    if ($("seed").value !== "") fields.push(["seed", String(Math.max(0, Math.floor(Number($("seed").value))))]);
  }
  return fields;
}

async function run() {
  const endpoint = currentEndpoint();
  const model = $("model").value;
  if (!endpoint || !model || (takesImage(endpoint) && !state.image)) return;
  if (endpoint.path === "inpaint" && !state.mask?.painted && !(await hasTransparency())) {
    state.seq += 1; // a newer view: an answer still on its way must not replace it
    for (const url of state.objectUrls.splice(0)) URL.revokeObjectURL(url);
    renderMaskEditor(null);
    $("error").hidden = true;
    $("request-info").hidden = true;
    $("raw").hidden = true;
    $("status").textContent = "Paint over the part of the image to fill (hold the mouse button), then press Run.";
    setState("idle");
    return;
  }
  const fields = [["model", model], ...fieldsFor(endpoint, model)];
  const form = new FormData();
  const files = [];
  if (takesImage(endpoint)) {
    form.append("image", state.image.blob, state.image.name);
    files.push(["image", state.image.name]);
  }
  if (endpoint.path === "inpaint" && state.mask?.painted) {
    form.append("mask", await maskBlob(), "mask.png");
    files.push(["mask", "mask.png"]);
  }
  for (const [key, value] of fields) form.append(key, value);

  const seq = ++state.seq;
  const result = $("result");
  result.dataset.seq = String(seq);
  result.dataset.endpoint = endpoint.path;
  setState("busy");
  $("status").textContent = state.image && takesImage(endpoint)
    ? `Sending ${state.image.name} to /${endpoint.path} (${model})…` : `Asking /${endpoint.path} (${model})…`;
  $("error").hidden = true;

  const start = performance.now();
  let response;
  let body;
  try {
    response = await fetch(endpoint.path, { method: "POST", body: form });
    body = response.ok && IMAGE_ANSWERS.has(endpoint.path) ? await response.blob() : await response.text();
  } catch (err) {
    if (seq === state.seq) showError(`Could not reach the service (${err.message}). Is it still running?`);
    return;
  }
  if (seq !== state.seq) return; // a newer request was sent meanwhile
  const latency = performance.now() - start;

  for (const url of state.objectUrls.splice(0)) URL.revokeObjectURL(url);
  $("latency").textContent = `${latency.toFixed(0)} ms (HTTP ${response.status}, measured in the browser)`;
  $("curl").textContent = curlCommand(endpoint, fields, files);
  $("request-info").hidden = false;
  $("copy-curl").textContent = "Copy";

  if (!response.ok) {
    $("view").replaceChildren();
    $("raw").hidden = true;
    if (endpoint.path === "inpaint") renderMaskEditor(null); // the hole can be painted again
    showError(errorMessage(response.status, body));
    return;
  }
  let answer = null;
  if (!IMAGE_ANSWERS.has(endpoint.path)) {
    answer = JSON.parse(body);
    $("raw-json").textContent = JSON.stringify(answer, (key, value) =>
      typeof value === "string" && value.length > 120 ? `${value.slice(0, 24)}… (${formatNumber(value.length)} characters of base64)` : value, 2);
  }
  $("raw").hidden = answer === null;
  try {
    const render = { classify: renderClassify, detect: renderDetect, segment: renderSegment,
      denoise: renderDenoise, anomaly: renderAnomaly, embed: renderEmbed, inpaint: renderMaskEditor,
      generate: renderGenerate }[endpoint.path];
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

// ---------- /embed: the vector, its nearest gallery images, its place on the gallery's map ----------

function renderEmbed(answer) {
  const { canvas, draw } = imageCanvas(state.image.bitmap?.width || 1, state.image.bitmap?.height || 1, 160, 160);
  canvas.setAttribute("aria-label", "the image sent");
  draw(canvas.getContext("2d"));
  const head = answer.embedding.slice(0, 6).map((v) => v.toFixed(3)).join(", ");
  const summary = el("p", { id: "embedding-summary", className: "summary",
    text: `${answer.dim} numbers, L2-normalised: [${head}${answer.dim > 6 ? ", …" : ""}]` });
  const parts = [el("div", { className: "side-by-side" }, figure("input", canvas), summary)];
  if (!answer.map && !answer.neighbors) {
    parts.push(el("p", { className: "hint", text: "This model carries no reference gallery: the digits demo models "
      + "(cae_inpaint, cae, lenet5) also answer nearest neighbours and a map." }));
  }
  const labels = [...new Set((answer.map?.points || []).map((p) => p.label))].sort();
  const colourOf = (label) => css(colour(labels.indexOf(label) + 1));
  const columns = [];
  if (answer.map) columns.push(embeddingMap(answer.map, labels, colourOf));
  if (answer.neighbors) {
    const list = el("ol", { className: "neighbors", id: "neighbors-list" }, ...answer.neighbors.map((n) => {
      const thumb = n.image ? el("img", { src: objectUrl(b64Blob(n.image)), alt: `gallery image ${n.index}`, className: "pixelated" }) : null;
      return el("li", { dataset: { label: n.label, distance: String(n.distance), index: String(n.index) } },
        thumb, el("span", { className: "label", text: n.label }),
        el("span", { className: "score", text: n.distance.toFixed(3) }));
    }));
    columns.push(el("div", { className: "neighbors-box" },
      el("h3", { text: `Nearest ${answer.neighbors.length} in the ${answer.gallery}` }),
      el("p", { className: "hint", text: "label · distance between the unit vectors" }), list));
  }
  if (columns.length) parts.push(el("div", { className: "side-by-side" }, ...columns));
  $("view").replaceChildren(...parts);
}

function embeddingMap(map, labels, colourOf) {
  const size = 380;
  const canvas = el("canvas", { width: size, height: size, id: "embed-map", role: "img",
    "aria-label": `the gallery's ${map.points.length} images on a 2-D map, coloured by label, with the image sent` });
  const ctx = canvas.getContext("2d");
  const at = (v) => ((v + 1.08) / 2.16) * size; // the map is scaled into [-1, 1]
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, size, size);
  for (const p of map.points) {
    ctx.fillStyle = colourOf(p.label);
    ctx.beginPath();
    ctx.arc(at(p.x), at(-p.y), 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  const [x, y] = [at(map.x), at(-map.y)];
  ctx.lineWidth = 3;
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc(x, y, 9, 0, 2 * Math.PI);
  ctx.fill();
  ctx.stroke();
  ctx.beginPath();
  ctx.moveTo(x - 14, y); ctx.lineTo(x + 14, y); ctx.moveTo(x, y - 14); ctx.lineTo(x, y + 14);
  ctx.stroke();
  Object.assign(canvas.dataset, { points: String(map.points.length), x: String(map.x), y: String(map.y) });
  const legend = el("ul", { className: "legend map-legend" }, ...labels.map((label) => {
    const swatch = el("span", { className: "swatch", "aria-hidden": "true" });
    swatch.style.background = colourOf(label);
    return el("li", {}, swatch, el("span", { className: "label", text: label }));
  }));
  return el("figure", { className: "map" }, canvas, legend,
    el("figcaption", { text: `${map.method}. The image sent: the black-ringed marker.` }));
}

// ---------- /inpaint: paint the hole with the mouse ----------

async function hasTransparency() {
  const bitmap = state.image?.bitmap;
  if (!bitmap) return false;
  const data = pixels(bitmap).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] < 128) return true;
  return false;
}

function ensureMask() {
  const { width, height } = state.image.bitmap;
  if (!state.mask) {
    const canvas = el("canvas", { width, height }); // the image's own pixels: white = fill
    const overlay = el("canvas", { width, height }); // the same strokes in red, to draw over the image
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    state.mask = { canvas, overlay, painted: false, brush: 24 };
  }
  return state.mask;
}

// The mask as a PNG of the image's size, strictly black and white (canvas strokes have soft edges).
async function maskBlob() {
  const { canvas } = state.mask;
  const image = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < image.data.length; i += 4) {
    const v = image.data[i] >= 64 ? 255 : 0;
    image.data.set([v, v, v, 255], i);
  }
  const out = el("canvas", { width: canvas.width, height: canvas.height });
  out.getContext("2d").putImageData(image, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

function renderMaskEditor(blob) {
  if (!state.image?.bitmap) {
    $("view").replaceChildren(el("p", { className: "hint", text: "This browser cannot display the image, so no hole "
      + "can be painted on it; send an image whose transparent pixels are the hole instead." }));
    return;
  }
  const mask = ensureMask();
  const { width, height } = state.image.bitmap;
  const { canvas, scale, draw } = imageCanvas(width, height, 320, 320);
  canvas.id = "mask-canvas";
  canvas.className = "paintable";
  canvas.setAttribute("aria-label", "the image: hold the mouse button and paint over the part to fill");
  const redraw = () => {
    const ctx = canvas.getContext("2d");
    draw(ctx);
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 0.55; // the hole in translucent red over the image
    ctx.drawImage(mask.overlay, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
    canvas.dataset.painted = String(mask.painted);
  };
  // A stroke is the brush dragged from the last pointer position to this one: the browser reports a fast movement
  // as a few far-apart points, and the hole must not be a row of dots.
  let last = null;
  const paintAt = (event) => {
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) * (canvas.width / rect.width)) / scale;
    const y = ((event.clientY - rect.top) * (canvas.height / rect.height)) / scale;
    const r = mask.brush / 2 / scale;
    for (const [target, colour] of [[mask.canvas, "#fff"], [mask.overlay, "rgb(230, 25, 75)"]]) {
      const ctx = target.getContext("2d");
      ctx.fillStyle = colour;
      ctx.strokeStyle = colour;
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fill();
      if (last) {
        ctx.lineWidth = 2 * r;
        ctx.lineCap = "round";
        ctx.beginPath();
        ctx.moveTo(last.x, last.y);
        ctx.lineTo(x, y);
        ctx.stroke();
      }
      if (r < 0.75) ctx.fillRect(Math.floor(x), Math.floor(y), 1, 1); // smaller than a pixel: the pixel
    }
    last = { x, y };
    mask.painted = true;
    redraw();
    updateRunButton();
  };
  let painting = false;
  canvas.addEventListener("pointerdown", (event) => {
    painting = true;
    last = null;
    canvas.setPointerCapture?.(event.pointerId);
    paintAt(event);
  });
  canvas.addEventListener("pointermove", (event) => { if (painting) paintAt(event); });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => {
      painting = false;
      last = null;
    });
  }
  redraw();

  const brush = el("input", { id: "brush-size", type: "range", min: "4", max: "80", step: "2", value: String(mask.brush) });
  const brushValue = el("output", { for: "brush-size", text: `${mask.brush} px` });
  brush.addEventListener("input", () => {
    mask.brush = Number(brush.value);
    brushValue.textContent = `${mask.brush} px`;
  });
  const clear = el("button", { type: "button", id: "clear-mask", text: "Clear the hole" });
  clear.addEventListener("click", () => {
    state.mask = null;
    renderMaskEditor(null);
  });
  const figures = [figure("paint the hole (red)", canvas)];
  if (blob) {
    const output = pictureOf(blob, "the image with the hole filled", width);
    output.id = "inpainted";
    figures.push(figure("filled", output));
  }
  $("view").replaceChildren(el("div", { className: "side-by-side" }, ...figures),
    el("div", { className: "slider" }, el("label", { for: "brush-size", text: "Brush" }), brush, brushValue),
    el("p", { className: "hint" }, clear, " Run sends the image and the hole (white = fill) as ",
      el("code", { text: "mask" }), "; pixels outside the hole come back unchanged."));
}

// ---------- /generate: a grid of new images, a seed to get them again ----------

function renderGenerate(answer) {
  // Run asks for the same images again; "New seed" for others. Not while a person is typing a seed there.
  if (document.activeElement !== $("seed")) $("seed").value = String(answer.seed);
  const grid = el("img", { src: objectUrl(b64Blob(answer.grid)), alt: `${answer.images.length} generated images`,
    id: "generated-grid", className: "pixelated" });
  grid.dataset.seed = String(answer.seed);
  grid.dataset.count = String(answer.images.length);
  grid.addEventListener("load", () => { grid.width = Math.min(480, grid.naturalWidth * 4); });
  $("view").replaceChildren(figure(`seed ${answer.seed} · ${answer.images.length} images from ${answer.model}`, grid),
    el("p", { className: "hint", text: "The same seed gives the same images; “New seed” draws others." }));
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
  for (const id of ["neighbor-count", "count", "seed"]) $(id).addEventListener("change", run);
  $("new-seed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 2 ** 32));
    run();
  });
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
