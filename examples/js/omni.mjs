#!/usr/bin/env node
// The step protocol (docs/step-protocol.md) in JavaScript on onnxruntime-node: a text question in, the spoken
// answer out, equal to `omni-run` (ids, codes, WAV bytes) on dynamic and static bundles, greedy or seeded.
//
//   node examples/js/omni.mjs --bundle B --text "Why is the sky blue?" --greedy --voice dylan \
//       --out answer.wav --dump-codes answer.json
import { closeSync, openSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { Bundle } from './lib/bundle.mjs';
import { VOICE_SYSTEM_PROMPT, chatPrompt, generate, promptCodeRows } from './lib/generate.mjs';
import { MimiStream, pcm16, wavHeader } from './lib/mimi.mjs';
import { DynamicModel, StaticModel } from './lib/model.mjs';
import { Pcg64Random } from './lib/rng.mjs';

const USAGE = `usage: node omni.mjs --bundle DIR --text QUESTION [--greedy | --seed N] [--voice NAME]
       [--max-new-tokens N] [--context N] [--out answer.wav] [--dump-codes answer.json] [--timing]`;

class UsageError extends Error {}

function options(argv) {
  const { values } = parseArgs({ args: argv, options: {
    bundle: { type: 'string' }, text: { type: 'string' }, voice: { type: 'string' }, greedy: { type: 'boolean' },
    seed: { type: 'string' }, 'max-new-tokens': { type: 'string', default: '512' },
    context: { type: 'string', default: '2048' }, out: { type: 'string' }, 'dump-codes': { type: 'string' },
    timing: { type: 'boolean' }, help: { type: 'boolean' } } });
  if (values.help) { console.log(USAGE); process.exit(0); }
  if (!values.bundle || values.text === undefined) throw new UsageError('--bundle and --text are required');
  if (values.greedy && values.seed !== undefined) throw new UsageError('give --greedy or --seed, not both');
  const int = (name) => {
    if (!/^\d+$/.test(values[name])) throw new UsageError(`--${name} takes a non-negative integer, got ${values[name]}`);
    return Number(values[name]);
  };
  if (values.seed !== undefined) int('seed');
  const seed = values.seed === undefined ? null : BigInt(values.seed); // any size, as numpy takes it
  return { ...values, seed, maxNewTokens: int('max-new-tokens'), context: int('context') };
}

/** JSON as Python's json.dumps writes it (", " and ": " separators), so dumps compare byte for byte. */
function pythonJson(value) {
  if (Array.isArray(value)) return '[' + value.map(pythonJson).join(', ') + ']';
  if (value !== null && typeof value === 'object') {
    return '{' + Object.entries(value).map(([k, v]) => JSON.stringify(k) + ': ' + pythonJson(v)).join(', ') + '}';
  }
  return JSON.stringify(value);
}

/** onnxruntime before 1.32 dies (SIGFPE) in its FusedMatMul on the zero-length past of a fresh conversation
 * (section 3); without the Transpose+MatMul fusion the fp32 graphs compute the same bits (measured). */
function sessionOptions() {
  const [major, minor] = ort.env.versions.common.split('.').map(Number);
  const old = major === 1 && minor < 32;
  // Each session has its own thread pool and the graphs run one after another: spinning idle pools steal the
  // cores from the running one (full-size static int8, 2 busy cores: 272 -> 134 ms per step without spinning).
  const extra = { session: { intra_op: { allow_spinning: '0' } } };
  if (old) extra.optimization = { disable_specified_optimizers: 'MatmulTransposeFusion' };
  return { executionProviders: ['cpu'], extra };
}

/** Write through a temporary file moved into place, as omni-run does. */
function writeAtomic(path, bytes) {
  writeFileSync(path + '.part', bytes);
  renameSync(path + '.part', path);
}

async function main(argv) {
  const args = options(argv);
  const bundle = await Bundle.open(async (p) => readFileSync(join(args.bundle, p)),
    (file) => ort.InferenceSession.create(join(args.bundle, file), sessionOptions()));
  const cfg = bundle.config;
  const voice = args.voice ? await bundle.voice(args.voice) : null;
  const promptIds = bundle.tokenizer.encode(chatPrompt(args.text.trim(), voice ? VOICE_SYSTEM_PROMPT : null));
  const context = bundle.static ? bundle.static.context : args.context; // a static bundle's context is fixed
  if (promptIds.length >= context) {
    const fix = bundle.static ? 're-export the static bundle with a larger --context' : 'raise --context';
    console.error(`error: the prompt is ${promptIds.length} tokens but the context holds ${context}; start a new conversation or ${fix}`);
    return 1;
  }
  const model = bundle.static ? new StaticModel(ort, bundle, voice?.spkEmb ?? null)
    : new DynamicModel(ort, bundle, context, voice?.spkEmb ?? null);
  // omni-run without --seed and --greedy draws from fresh entropy; here seed 0 stands in for it.
  const rng = args.greedy ? null : new Pcg64Random(args.seed ?? 0);

  let mimi = null, wav = null, audioBytes = 0;
  if (args.out) {
    if (!bundle.sessions.mimi_decoder) throw new UsageError('this bundle has no Mimi decoder; leave out --out');
    mimi = new MimiStream(ort, bundle.sessions.mimi_decoder, bundle.manifest.mimi);
    wav = openSync(args.out + '.part', 'w');
    writeSync(wav, wavHeader(bundle.manifest.mimi.sample_rate, 0));
  }
  const t0 = performance.now();
  const result = await generate(model, promptIds, promptCodeRows(cfg, promptIds.length, voice?.refCodes ?? null),
    args.maxNewTokens, rng, async (frame) => {
      if (mimi === null) return;
      const pcm = pcm16(await mimi.decode(frame));
      writeSync(wav, pcm);
      audioBytes += pcm.length;
    });
  const seconds = (performance.now() - t0) / 1000;
  if (wav !== null) {
    writeSync(wav, wavHeader(bundle.manifest.mimi.sample_rate, audioBytes), 0, 44, 0);
    closeSync(wav);
    renameSync(args.out + '.part', args.out);
  }
  const { dump, reason } = result;
  console.log(bundle.tokenizer.decode(dump.text_ids.filter((t) => t !== cfg.eos_token_id)));
  if (reason !== 'eos') console.error(`[stopped: ${reason === 'length' ? 'max-new-tokens reached' : 'context full'}]`);
  if (args['dump-codes']) writeAtomic(args['dump-codes'], pythonJson(dump) + '\n');
  if (args.timing) {
    const steps = dump.audio_codes[0].length;
    console.error(`[timing: ${steps} steps, ${dump.frames.length} frames in ${seconds.toFixed(3)} s: ` +
      `${(1000 * seconds / steps).toFixed(2)} ms per step]`);
  }
  return 0;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (!(e instanceof UsageError) && !(e instanceof TypeError && e.code?.startsWith('ERR_PARSE_ARGS'))) throw e;
  console.error(`omni.mjs: error: ${e.message}\n${USAGE}`);
  process.exitCode = 2;
}
