// One question answered as `omni-run` answers it: the node CLI (omni.mjs) and the browser page (web/) both run
// this, and differ only in how they read the bundle's files, which onnxruntime package they pass in, and where the
// audio goes.
import { VOICE_SYSTEM_PROMPT, chatPrompt, generate, promptCodeRows } from './generate.mjs';
import { FrameBatcher, MimiStream, pcm16 } from './mimi.mjs';
import { DynamicModel, StaticModel } from './model.mjs';
import { Pcg64Random } from './rng.mjs';

/** Section 8: frames per Mimi call after an answer's first (omni-run's mimi.STEADY_FRAMES_PER_CALL). */
const FRAMES_PER_CALL = 4;

/** A prompt that does not fit the context: the caller reports `message` as a user error. */
export class PromptTooLong extends Error {}

/** Session options for the bundle's graphs, on onnxruntime-node ('cpu') or onnxruntime-web ('wasm'). */
export function sessionOptions(executionProviders) {
  // Each session has its own thread pool and the graphs run one after another: spinning idle pools steal the
  // cores from the running one (full-size static int8, 2 busy cores: 272 -> 134 ms per step without spinning).
  return { executionProviders, extra: { session: { intra_op: { allow_spinning: '0' } } } };
}

/** Runs `question` ({text, voice, greedy, seed (BigInt or null), maxNewTokens, context}) on an open Bundle.
 * `onPcm(bytes)` receives each Mimi call's 16-bit PCM as it is decoded (null: no audio). Returns {text, dump, reason,
 * seconds, steps}: the answer's text, the --dump-codes object, why it stopped ("eos", "length", "context"), the
 * loop's wall time and its number of steps. */
export async function answer(ort, bundle, question, onPcm) {
  const cfg = bundle.config;
  const voice = question.voice ? await bundle.voice(question.voice) : null;
  const promptIds = bundle.tokenizer.encode(chatPrompt(question.text.trim(), voice ? VOICE_SYSTEM_PROMPT : null));
  const context = bundle.static ? bundle.static.context : question.context; // a static bundle's context is fixed
  if (promptIds.length >= context) {
    const fix = bundle.static ? 're-export the static bundle with a larger --context' : 'raise --context';
    throw new PromptTooLong(`the prompt is ${promptIds.length} tokens but the context holds ${context}; start a new conversation or ${fix}`);
  }
  if (onPcm !== null && !bundle.sessions.mimi_decoder) throw new Error('this bundle has no Mimi decoder; ask for no audio');
  const model = bundle.static ? new StaticModel(ort, bundle, voice?.spkEmb ?? null)
    : new DynamicModel(ort, bundle, context, voice?.spkEmb ?? null);
  // omni-run without --seed and --greedy draws from fresh entropy; here seed 0 stands in for it.
  const rng = question.greedy ? null : new Pcg64Random(question.seed ?? 0n);
  const mimi = onPcm === null ? null : new FrameBatcher(
    new MimiStream(ort, bundle.sessions.mimi_decoder, bundle.manifest.mimi), bundle.static ? 1 : FRAMES_PER_CALL);
  const t0 = performance.now();
  const { dump, reason } = await generate(model, promptIds, promptCodeRows(cfg, promptIds.length, voice?.refCodes ?? null),
    question.maxNewTokens, rng, async (frame) => {
      const pcm = mimi === null ? null : await mimi.push(frame);
      if (pcm !== null) await onPcm(pcm16(pcm));
    });
  const rest = mimi === null ? null : await mimi.flush();
  if (rest !== null) await onPcm(pcm16(rest));
  const seconds = (performance.now() - t0) / 1000;
  const text = bundle.tokenizer.decode(dump.text_ids.filter((t) => t !== cfg.eos_token_id));
  return { text, dump, reason, seconds, steps: dump.audio_codes[0].length };
}

/** The line omni-run writes to stderr when an answer is cut short, or null. */
export function stopLine(reason) {
  if (reason === 'eos') return null;
  return `[stopped: ${reason === 'length' ? 'max-new-tokens reached' : 'context full'}]`;
}
