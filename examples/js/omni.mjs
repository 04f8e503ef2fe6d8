#!/usr/bin/env node
// The step protocol (docs/step-protocol.md) in JavaScript on onnxruntime-node: a text question in, the spoken
// answer out, equal to `omni-run` (ids, codes, WAV bytes) on dynamic and static bundles, greedy or seeded.
//
//   node examples/js/omni.mjs --bundle B --text "Why is the sky blue?" --greedy --voice dylan \
//       --out answer.wav --dump-codes answer.json
import { closeSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { PromptTooLong, answer, sessionOptions, stopLine } from './lib/answer.mjs';
import { Bundle } from './lib/bundle.mjs';
import { pythonJson } from './lib/generate.mjs';
import { wavHeader } from './lib/mimi.mjs';

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

/** Write through a temporary file moved into place, as omni-run does. */
function writeAtomic(path, bytes) {
  writeFileSync(path + '.part', bytes);
  renameSync(path + '.part', path);
}

async function main(argv) {
  const args = options(argv);
  const bundle = await Bundle.open(async (p) => readFileSync(join(args.bundle, p)),
    (file) => ort.InferenceSession.create(join(args.bundle, file), sessionOptions(['cpu'])));
  let wav = null, audioBytes = 0;
  if (args.out) {
    if (!bundle.sessions.mimi_decoder) throw new UsageError('this bundle has no Mimi decoder; leave out --out');
    wav = openSync(args.out + '.part', 'w');
    writeSync(wav, wavHeader(bundle.manifest.mimi.sample_rate, 0));
  }
  let result;
  try {
    result = await answer(ort, bundle, args, wav === null ? null : async (pcm) => {
      writeSync(wav, pcm);
      audioBytes += pcm.length;
    });
  } catch (e) {
    if (wav !== null) { closeSync(wav); unlinkSync(args.out + '.part'); }
    if (!(e instanceof PromptTooLong)) throw e;
    console.error(`error: ${e.message}`);
    return 1;
  }
  if (wav !== null) {
    writeSync(wav, wavHeader(bundle.manifest.mimi.sample_rate, audioBytes), 0, 44, 0);
    closeSync(wav);
    renameSync(args.out + '.part', args.out);
  }
  const { text, dump, reason, seconds, steps } = result;
  console.log(text);
  if (stopLine(reason) !== null) console.error(stopLine(reason));
  if (args['dump-codes']) writeAtomic(args['dump-codes'], pythonJson(dump) + '\n');
  if (args.timing) {
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
