// Runs ONNX models in onnxruntime-node or onnxruntime-web (WASM) under Node, for bench/runtimes.py.
//
//   node bench/ort_js_runner.js node|web JOBS.json
//
// JOBS.json: [{"model": PATH, "feeds": [{"name", "dtype", "dims", "file"}], "out": DIR, "reps": K,
//              "steps": S}]
// Each feed's file holds the raw little-endian data. For every job the outputs are written to
// DIR/NAME.bin with DIR/outputs.json ([{"name", "dtype", "dims", "file"}], plus "ms": the median
// run time of `reps` runs after one warm-up when reps > 0), or DIR/error.txt when it fails.
// With "steps": S > 1 the model is a train step run S times, each output `X.next` fed back into the
// input `X`; step k's outputs go to DIR/stepK/ (one session: no reload of the runtime per step).
// The package is found through NODE_PATH (the cache folder npm installed it into).
'use strict';
const fs = require('fs');
const path = require('path');

const kind = process.argv[2];
const jobs = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const ort = require(kind === 'web' ? 'onnxruntime-web' : 'onnxruntime-node');
if (kind === 'web') {
  ort.env.wasm.numThreads = 1;
}

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array,
  uint8: Uint8Array, bool: Uint8Array, uint32: Uint32Array,
};

function tensorOf(feed) {
  const bytes = fs.readFileSync(feed.file);
  const Arr = ARRAYS[feed.dtype];
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  const data = new Arr(copy.buffer, 0, bytes.length / Arr.BYTES_PER_ELEMENT);
  return new ort.Tensor(feed.dtype, data, feed.dims);
}

function writeOutputs(session, results, dir, ms) {
  fs.mkdirSync(dir, { recursive: true });
  const meta = [];
  for (const name of session.outputNames) {
    const t = results[name];
    const file = path.join(dir, `out${meta.length}.bin`);
    const d = t.data;
    fs.writeFileSync(file, Buffer.from(d.buffer, d.byteOffset, d.byteLength));
    meta.push({ name, dtype: t.type, dims: t.dims, file });
  }
  fs.writeFileSync(path.join(dir, 'outputs.json'), JSON.stringify({ outputs: meta, ms }));
}

async function main() {
  for (const job of jobs) {
    fs.mkdirSync(job.out, { recursive: true });
    try {
      const session = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(job.model)));
      const feeds = {};
      for (const f of job.feeds) feeds[f.name] = tensorOf(f);
      for (let k = 0; k < (job.steps || 1) - 1; k++) {
        const out = await session.run(feeds);
        writeOutputs(session, out, path.join(job.out, `step${k}`), null);
        for (const name of session.outputNames) {
          const state = name.endsWith('.next') ? name.slice(0, -'.next'.length) : null;
          if (state !== null && state in feeds) feeds[state] = out[name];
        }
      }
      let results = await session.run(feeds);
      let ms = null;
      if (job.reps > 0) {
        const times = [];
        for (let i = 0; i < job.reps; i++) {
          const t0 = process.hrtime.bigint();
          results = await session.run(feeds);
          times.push(Number(process.hrtime.bigint() - t0) / 1e6);
        }
        times.sort((a, b) => a - b);
        ms = times[Math.floor(times.length / 2)];
      }
      writeOutputs(session, results, job.steps > 1 ? path.join(job.out, `step${job.steps - 1}`) : job.out, ms);
      if (session.release) await session.release();
    } catch (e) {
      fs.writeFileSync(path.join(job.out, 'error.txt'), String(e && e.message ? e.message : e));
    }
  }
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
