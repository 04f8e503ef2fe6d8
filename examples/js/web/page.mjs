// The page's half of the step protocol: the bundle read with fetch() or from a picked folder, onnxruntime-web's
// WebAssembly backend passed to the same lib the node CLI runs, the WAV and the --dump-codes JSON built in memory.
// Query parameters fill the form (bundle, text, voice, seed (none: greedy), max-new-tokens, context, threads); with
// autorun=1 the page answers at once and leaves the outcome in `window.omniResult` (what the browser test reads).
import * as ort from '../node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import { PromptTooLong, answer, sessionOptions, stopLine } from '../lib/answer.mjs';
import { Bundle } from '../lib/bundle.mjs';
import { pythonJson } from '../lib/generate.mjs';
import { wavHeader } from '../lib/mimi.mjs';

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
for (const id of ['bundle', 'text', 'voice', 'seed', 'max-new-tokens', 'context', 'threads']) {
  if (query.has(id)) $(id).value = query.get(id);
}

/** `readBytes(path)` for Bundle.open: from the picked folder if there is one, else over HTTP from the URL. */
function bundleReader() {
  const picked = $('folder').files;
  if (picked.length > 0) {
    const files = new Map([...picked].map((f) => [f.webkitRelativePath.split('/').slice(1).join('/'), f]));
    return async (path) => {
      if (!files.has(path)) throw new Error(`the picked folder has no ${path}: pick a bundle folder (it holds manifest.json)`);
      return new Uint8Array(await files.get(path).arrayBuffer());
    };
  }
  const base = new URL($('bundle').value.replace(/\/?$/, '/'), location.href);
  return async (path) => {
    const r = await fetch(new URL(path, base));
    if (!r.ok) throw new Error(`${new URL(path, base)}: HTTP ${r.status}; is the bundle served there?`);
    return new Uint8Array(await r.arrayBuffer());
  };
}

function int(id) {
  const v = $(id).value.trim();
  if (!/^\d+$/.test(v)) throw new Error(`${id} takes a non-negative integer, got "${v}"`);
  return Number(v);
}

function question() {
  const seed = $('seed').value.trim();
  if (seed !== '' && !/^\d+$/.test(seed)) throw new Error(`seed takes a non-negative integer, got "${seed}"`);
  return { text: $('text').value, voice: $('voice').value.trim() || null, greedy: seed === '',
    seed: seed === '' ? null : BigInt(seed), maxNewTokens: int('max-new-tokens'), context: int('context') };
}

function base64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function run() {
  $('error').textContent = '';
  $('answer').textContent = '';
  $('status').textContent = 'loading the bundle…';
  const q = question();
  if ($('threads').value.trim()) ort.env.wasm.numThreads = int('threads'); // read at the first session only
  const read = bundleReader();
  const weights = new Map(); // each shared weights file read once
  const bundle = await Bundle.open(read, async (file, external) => {
    const options = sessionOptions(['wasm']);
    if (external.length) {
      for (const path of external) if (!weights.has(path)) weights.set(path, read(path));
      options.externalData = await Promise.all(external.map(async (path) => ({ path, data: await weights.get(path) })));
    }
    return ort.InferenceSession.create(await read(file), options);
  });
  const pcm = [];
  $('status').textContent = 'answering…';
  const result = await answer(ort, bundle, q, bundle.sessions.mimi_decoder ? async (bytes) => { pcm.push(bytes); } : null);
  const audioBytes = pcm.reduce((n, b) => n + b.length, 0);
  const wav = new Uint8Array(44 + audioBytes);
  wav.set(wavHeader(bundle.manifest.mimi.sample_rate, audioBytes));
  pcm.reduce((at, b) => { wav.set(b, at); return at + b.length; }, 44);
  const codes = pythonJson(result.dump) + '\n';
  const msPerStep = (1000 * result.seconds) / result.steps;
  $('answer').textContent = result.text;
  $('status').textContent = [stopLine(result.reason), `${result.steps} steps in ${result.seconds.toFixed(2)} s: ` +
    `${msPerStep.toFixed(2)} ms per step (onnxruntime-web ${ort.env.versions.common}, ${ort.env.wasm.numThreads} thread(s))`]
    .filter((s) => s !== null).join(' ');
  const show = (id, blob) => { $(id).href = URL.createObjectURL(blob); $(id).hidden = false; };
  show('wav-link', new Blob([wav], { type: 'audio/wav' }));
  show('codes-link', new Blob([codes], { type: 'application/json' }));
  $('audio').src = $('wav-link').href;
  $('audio').hidden = audioBytes === 0;
  return { ok: true, text: result.text, stop: stopLine(result.reason), codes, wav: base64(wav), steps: result.steps,
    msPerStep, threads: ort.env.wasm.numThreads, ort: ort.env.versions.common, isolated: self.crossOriginIsolated };
}

async function runAndReport() {
  $('run').disabled = true;
  try {
    window.omniResult = await run();
  } catch (e) {
    $('status').textContent = '';
    $('error').textContent = `error: ${e.message}`;
    window.omniResult = { ok: false, error: e.message, userError: e instanceof PromptTooLong };
  } finally {
    $('run').disabled = false;
  }
}

$('form').addEventListener('submit', (ev) => { ev.preventDefault(); runAndReport(); });
if (query.get('autorun') === '1') runAndReport();
