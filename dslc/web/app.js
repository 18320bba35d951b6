// The page of `dslc export-web`: trains the exported step with onnxruntime-web (WASM), feeding every
// output X.next back as input X; curves, test predictions and a drawing pad.
//
// URL parameters: steps=K, batch=B (defaults: 300 and the train declaration's batch), autostart=1,
// eval=E (test accuracy every E steps; 0: only at the end).
// For tests: window.dslcReady (a promise), window.dslcTrain(steps, batch) (a promise of the result),
// window.dslcResult ({steps, batch, losses, accuracy}) and window.dslcParams() ({name: base64 of the
// float32 or int64 bytes} of every state value).
'use strict';

const $ = (id) => document.getElementById(id);
const prod = (dims) => dims.reduce((a, b) => a * b, 1);
const query = new URLSearchParams(location.search);

ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;  // an absolute URL: import() needs one
ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain http.server lacks

let M = null;            // manifest.json
let DATA = {};           // name -> {bytes: Uint8Array, dims}
let initialState = {};   // name -> ort.Tensor
let state = {};
let trainSession = null, modelSession = null;
let stepIndex = 0, running = false, stopRequested = false;
const history = { losses: [], accuracy: [] };  // accuracy: [step, value]

// ---------------------------------------------------------------- loading
async function fetchBuffer(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.arrayBuffer();
}

async function load() {
  M = await (await fetch('manifest.json')).json();
  $('title').textContent = `${M.train}: ${M.step} in the browser`;
  const stateBuf = await fetchBuffer('state.bin');
  for (const e of M.state) {
    const n = prod(e.dims);
    const Arr = e.dtype === 'int64' ? BigInt64Array : Float32Array;
    const data = new Arr(stateBuf.slice(e.offset, e.offset + n * Arr.BYTES_PER_ELEMENT));
    initialState[e.name] = new ort.Tensor(e.dtype, data, e.dims);
  }
  state = { ...initialState };
  const dataBuf = new Uint8Array(await fetchBuffer('data.bin'));
  for (const d of M.data) DATA[d.name] = { bytes: dataBuf.subarray(d.offset, d.offset + prod(d.dims)), dims: d.dims };
  const opts = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
  trainSession = await ort.InferenceSession.create('train_step.onnx', opts);
  modelSession = await ort.InferenceSession.create('model.onnx', opts);
  $('sub').textContent = `${M.file}: step ${M.step} (${M.state.length} state tensors), model ${M.export}; ` +
    `${DATA.train_image.dims[0]} train / ${DATA.test_image.dims[0]} test ${M.dataset} images; ` +
    `onnxruntime-web ${ort.env.versions ? ort.env.versions.web : ''} (WASM)`;
  $('batch').value = query.get('batch') || M.batch;
  if (query.get('steps')) $('steps').value = query.get('steps');
  $('train').disabled = false; $('reset').disabled = false;
  setStatus('ready');
  drawCurves();
  await evaluate(false);
}

// ---------------------------------------------------------------- preprocessing (the train fields' pipes)
function fieldTensor(source, indices, pipes, dtype, itemDims) {
  const split = source === 'image' ? DATA.train_image : DATA.train_label;
  return pipeline(split, indices, pipes, dtype);
}

function pipeline(split, indices, pipes, dtype) {
  const item = prod(split.dims.slice(1));
  let dims = [indices.length, ...split.dims.slice(1)];
  let values = new Float64Array(indices.length * item);  // exact for uint8 and their float32 images
  let isFloat = false;
  for (let i = 0; i < indices.length; i++) {
    values.set(split.bytes.subarray(indices[i] * item, (indices[i] + 1) * item), i * item);
  }
  for (const [name, args] of pipes) {
    if (name === 'scale') {  // as numpy: float32(x) * float32((hi - lo) / 255) + float32(lo)
      const a = Math.fround((args[1] - args[0]) / 255), b = Math.fround(args[0]);
      for (let i = 0; i < values.length; i++) values[i] = Math.fround(Math.fround(values[i] * a) + b);
      isFloat = true;
    } else if (name === 'channels_first') {
      dims = [dims[0], 1, ...dims.slice(1)];
    } else if (name === 'flatten') {
      dims = [dims[0], prod(dims.slice(1))];
    } else if (name === 'one_hot') {
      const k = args[0], hot = new Float64Array(values.length * k);
      for (let i = 0; i < values.length; i++) hot[i * k + values[i]] = 1;
      values = hot; dims = [...dims, k]; isFloat = true;
    } else if (name === 'int64') {
      isFloat = false;
    } else {
      throw new Error(`preprocessing ${name} is not supported by the page`);
    }
  }
  if (dtype === 'int64') return new ort.Tensor('int64', BigInt64Array.from(values, (v) => BigInt(v)), dims);
  return new ort.Tensor('float32', Float32Array.from(values), dims);
}

function batchIndices(k, batch) {
  const n = DATA.train_image.dims[0], idx = new Array(batch);
  for (let i = 0; i < batch; i++) idx[i] = (k * batch + i) % n;
  return idx;
}

const scalar64 = (v) => new ort.Tensor('int64', BigInt64Array.from([BigInt(v)]), []);

// ---------------------------------------------------------------- training
async function trainStep(batch) {
  const feeds = {};
  for (const name of trainSession.inputNames) if (state[name]) feeds[name] = state[name];
  const idx = batchIndices(stepIndex, batch);
  for (const f of M.feeds) feeds[f.input] = fieldTensor(f.source, idx, f.pipes, f.dtype);
  if (trainSession.inputNames.includes('step')) feeds.step = scalar64(stepIndex);
  if (trainSession.inputNames.includes('seed')) feeds.seed = scalar64(M.step_seed);
  const out = await trainSession.run(feeds);
  for (const name of M.outputs) {
    if (name.endsWith('.next') && name !== 'step.next') state[name.slice(0, -5)] = out[name];
  }
  stepIndex += 1;
  const loss = Number(out.loss.data[0]);
  history.losses.push(loss);
  return loss;
}

async function train(steps, batch) {
  if (running) return window.dslcResult;
  running = true; stopRequested = false;
  $('batch').value = batch; $('steps').value = steps;
  $('train').textContent = 'Pause';
  const evalEvery = query.has('eval') ? Number(query.get('eval')) : 25;
  const t0 = performance.now(), first = stepIndex;
  try {
    for (let i = 0; i < steps && !stopRequested; i++) {
      const loss = await trainStep(batch);
      if (!Number.isFinite(loss)) throw new Error(`the loss became ${loss} at step ${stepIndex}`);
      const done = i + 1, rate = done / ((performance.now() - t0) / 1000);
      $('progress').value = done / steps;
      setStatus(`step ${stepIndex} (${done}/${steps}), loss ${loss.toFixed(4)}, ${rate.toFixed(1)} steps/s, ` +
        `ETA ${Math.max(0, (steps - done) / rate).toFixed(0)} s`);
      if (done % 5 === 0 || done === steps) drawCurves();
      if (evalEvery > 0 && stepIndex % evalEvery === 0 && done !== steps) await evaluate(true);
      await new Promise((r) => setTimeout(r, 0));  // let the page paint
    }
    await evaluate(true);
    const secs = (performance.now() - t0) / 1000;
    setStatus(`trained ${stepIndex - first} steps in ${secs.toFixed(1)} s; loss ${history.losses.at(-1).toFixed(4)}, ` +
      `test accuracy ${(100 * history.accuracy.at(-1)[1]).toFixed(1)}%`);
  } catch (e) {
    setStatus(`error: ${e.message || e}`);
    window.dslcError = String(e.message || e);
    throw e;
  } finally {
    running = false;
    $('train').textContent = 'Train';
    drawCurves();
  }
  window.dslcResult = { steps: stepIndex, batch, losses: history.losses.slice(),
                        accuracy: history.accuracy.slice() };
  return window.dslcResult;
}

function setStatus(text) { $('status').textContent = text; }

// ---------------------------------------------------------------- inference
async function predict(split, indices) {
  const feeds = { [M.model.input]: pipeline(split, indices, M.model.pipes, 'float32') };
  for (const w of M.model.weights) feeds[w] = state[w];
  const out = await modelSession.run(feeds);
  const scores = out[M.model.output], k = scores.dims[1], rows = [];
  for (let i = 0; i < indices.length; i++) rows.push(Array.from(scores.data.subarray(i * k, (i + 1) * k)));
  return rows;
}

const argmax = (row) => row.reduce((best, v, i) => (v > row[best] ? i : best), 0);

async function evaluate(record) {
  const n = DATA.test_image.dims[0], chunk = 100;
  let correct = 0;
  const preds = [];
  for (let s = 0; s < n; s += chunk) {
    const idx = Array.from({ length: Math.min(chunk, n - s) }, (_, i) => s + i);
    const rows = await predict(DATA.test_image, idx);
    rows.forEach((row, i) => { const p = argmax(row); preds.push(p); if (p === DATA.test_label.bytes[idx[i]]) correct++; });
  }
  if (record) history.accuracy.push([stepIndex, correct / n]);
  showDigits(preds);
  drawCurves();
  return correct / n;
}

function showDigits(preds) {
  const box = $('digits');
  if (!box.children.length) {
    for (let i = 0; i < 24; i++) {
      const d = document.createElement('div'); d.className = 'digit';
      const c = document.createElement('canvas'); c.width = 28; c.height = 28; c.style.width = '56px'; c.style.height = '56px';
      const ctx = c.getContext('2d'), img = ctx.createImageData(28, 28);
      const px = DATA.test_image.bytes.subarray(i * 784, (i + 1) * 784);
      for (let j = 0; j < 784; j++) { img.data[4 * j] = img.data[4 * j + 1] = img.data[4 * j + 2] = 255 - px[j]; img.data[4 * j + 3] = 255; }
      ctx.putImageData(img, 0, 0);
      const t = document.createElement('div');
      d.append(c, t); box.append(d);
    }
  }
  for (let i = 0; i < 24; i++) {
    const t = box.children[i].lastChild, truth = DATA.test_label.bytes[i];
    t.textContent = `${preds[i]}` + (preds[i] === truth ? '' : ` (${truth})`);
    t.className = preds[i] === truth ? 'ok' : 'bad';
  }
}

// ---------------------------------------------------------------- curves
function plot(canvas, points, { yMin, yMax, color, xMax, label, smooth }) {
  const ctx = canvas.getContext('2d'), W = canvas.width, H = canvas.height, L = 44, B = 24, T = 8, R = 10;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = '#999'; ctx.fillStyle = '#555'; ctx.font = '11px system-ui'; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
  const x = (v) => L + (W - L - R) * v / Math.max(1, xMax), y = (v) => H - B - (H - B - T) * (v - yMin) / (yMax - yMin || 1);
  for (let i = 0; i <= 4; i++) {
    const v = yMin + (yMax - yMin) * i / 4;
    ctx.fillText(v.toFixed(yMax - yMin < 2 ? 2 : 1), 4, y(v) + 4);
    ctx.strokeStyle = '#eee'; ctx.beginPath(); ctx.moveTo(L + 1, y(v)); ctx.lineTo(W - R, y(v)); ctx.stroke();
  }
  ctx.fillText(`${label}: step ${xMax}`, L + 6, H - 6);
  if (!points.length) return;
  const line = (pts, style, width) => {
    ctx.strokeStyle = style; ctx.lineWidth = width; ctx.beginPath();
    pts.forEach(([px, py], i) => (i ? ctx.lineTo(x(px), y(py)) : ctx.moveTo(x(px), y(py))));
    ctx.stroke();
  };
  if (smooth) {
    line(points, 'rgba(59,111,212,0.3)', 1);
    let ema = points[0][1];
    line(points.map(([px, py]) => [px, (ema = 0.9 * ema + 0.1 * py)]), color, 2);
  } else {
    line(points, color, 2);
    ctx.fillStyle = color;
    points.forEach(([px, py]) => { ctx.beginPath(); ctx.arc(x(px), y(py), 2.5, 0, 7); ctx.fill(); });
  }
}

function drawCurves() {
  const losses = history.losses.map((v, i) => [i + 1, v]);
  const maxLoss = Math.max(0.5, ...history.losses.slice(0, 50), ...history.losses.slice(-50));
  plot($('loss'), losses, { yMin: 0, yMax: Math.ceil(maxLoss * 2) / 2, color: '#3b6fd4', xMax: stepIndex,
                            label: 'loss', smooth: true });
  plot($('acc'), history.accuracy, { yMin: 0, yMax: 1, color: '#17803d', xMax: stepIndex, label: 'accuracy' });
}

// ---------------------------------------------------------------- drawing pad
function setupPad() {
  const pad = $('pad'), ctx = pad.getContext('2d');
  const clear = () => { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, pad.width, pad.height); $('guess').textContent = '–'; $('probs').innerHTML = ''; };
  clear();
  let drawing = false, last = null;
  const pos = (e) => { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
  pad.addEventListener('pointerdown', (e) => { drawing = true; last = pos(e); pad.setPointerCapture(e.pointerId); });
  pad.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    const p = pos(e);
    ctx.strokeStyle = '#fff'; ctx.lineWidth = 24; ctx.lineCap = 'round';
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke(); last = p;
  });
  const end = () => { if (drawing) { drawing = false; classifyPad(); } };
  pad.addEventListener('pointerup', end); pad.addEventListener('pointerleave', end);
  $('clear').addEventListener('click', clear);
}

async function classifyPad() {
  // as MNIST was made: the drawing's bounding box scaled to fit 20x20, centred in 28x28
  const pad = $('pad'), px = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
  let x0 = pad.width, y0 = pad.height, x1 = -1, y1 = -1;
  for (let y = 0; y < pad.height; y++) for (let x = 0; x < pad.width; x++) {
    if (px[4 * (y * pad.width + x)] > 20) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  if (x1 < 0) return;
  // area-average the bounding box down to fit 20x20 (drawImage's downscaling would drop thin strokes),
  // then shift it so its centre of mass is the 28x28 image's centre
  const side = Math.max(x1 - x0, y1 - y0) + 1, scale = 20 / side;
  const sum = new Float64Array(784);
  const ox = (28 - (x1 - x0 + 1) * scale) / 2, oy = (28 - (y1 - y0 + 1) * scale) / 2;
  for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) {
    const tx = Math.floor(ox + (x - x0) * scale), ty = Math.floor(oy + (y - y0) * scale);
    sum[ty * 28 + tx] += px[4 * (y * pad.width + x)];
  }
  let mass = 0, mx = 0, my = 0;
  for (let i = 0; i < 784; i++) { sum[i] = Math.min(255, sum[i] * scale * scale); mass += sum[i]; mx += sum[i] * (i % 28); my += sum[i] * Math.floor(i / 28); }
  const dx = Math.round(13.5 - mx / mass), dy = Math.round(13.5 - my / mass), bytes = new Uint8Array(784);
  for (let i = 0; i < 784; i++) {
    const x = (i % 28) + dx, y = Math.floor(i / 28) + dy;
    if (x >= 0 && x < 28 && y >= 0 && y < 28) bytes[y * 28 + x] = Math.round(sum[i]);
  }
  const [row] = await predict({ bytes, dims: [1, 28, 28] }, [0]);
  const top = Math.max(...row), ex = row.map((v) => Math.exp(v - top)), total = ex.reduce((a, b) => a + b, 0);
  const isProb = row.every((v) => v >= 0 && v <= 1) && Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-3;
  const probs = isProb ? row : ex.map((v) => v / total);  // scores: softmax; probabilities as they are
  $('guess').textContent = String(argmax(row));
  $('probs').innerHTML = probs.map((p, i) =>
    `<div>${i} <span class="bar" style="width:${Math.round(120 * p)}px"></span> ${(100 * p).toFixed(1)}%</div>`).join('');
}

// ---------------------------------------------------------------- buttons and test hooks
function toBase64(t) {
  const b = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  let s = '';
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
  return btoa(s);
}

window.dslcParams = () => Object.fromEntries(Object.entries(state).map(([k, t]) => [k, toBase64(t)]));
window.dslcTrain = (steps, batch) => train(steps, batch || M.batch);

$('train').addEventListener('click', () => {
  if (running) { stopRequested = true; return; }
  train(Number($('steps').value), Number($('batch').value)).catch(() => {});
});
$('reset').addEventListener('click', async () => {
  if (running) return;
  state = { ...initialState }; stepIndex = 0; history.losses = []; history.accuracy = [];
  $('progress').value = 0; setStatus('reset'); drawCurves(); await evaluate(false);
});
setupPad();

window.dslcReady = load().then(() => {
  if (query.get('autostart') === '1') train(Number($('steps').value), Number($('batch').value)).catch(() => {});
}).catch((e) => { setStatus(`error: ${e.message || e}`); window.dslcError = String(e.message || e); throw e; });
