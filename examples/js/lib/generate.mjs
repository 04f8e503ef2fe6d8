// Sections 4 and 6: the prompt's code rows and the generation loop (text, the audio delay pattern, EOS fill, stop
// codes, frame assembly), with the dump omni-run writes for --dump-codes.
import { ContextFull } from './model.mjs';
import { AUDIO, sampleCode, sampleText } from './sampling.mjs';

/** Upstream's voice-clone system prompt, used whenever a voice preset is chosen. */
export const VOICE_SYSTEM_PROMPT = '你是一个专业的语音助手，请用给定的音色风格来回答用户的问题。请尽量详细地回答，给出有价值的信息。';

/** The chat template with the non-thinking generation prompt; `system` may be null. */
export function chatPrompt(question, system) {
  let text = system === null ? '' : `<|im_start|>system\n${system}<|im_end|>\n`;
  text += `<|im_start|>user\n${question}<|im_end|>\n`;
  return text + '<|im_start|>assistant\n<think>\n\n</think>\n\n';
}

/** The 8 code rows under the prompt: pads; with a voice its reference codes right-aligned (the last ones kept)
 * and the speaker code in the column before them. `refCodes`: 8 arrays of R codes, or null. */
export function promptCodeRows(cfg, promptLen, refCodes) {
  const rows = Array.from({ length: cfg.num_codebooks }, () => new Array(promptLen).fill(cfg.audio_pad_code));
  if (refCodes === null) return rows;
  const refLen = refCodes[0].length;
  const fillStart = Math.max(1, promptLen - refLen);
  rows.forEach((row, i) => {
    for (let p = fillStart; p < promptLen; p++) row[p] = refCodes[i][refLen - (promptLen - p)];
    row[fillStart - 1] = cfg.audio_spk_code;
  });
  return rows;
}

/** JSON as Python's json.dumps writes it (", " and ": " separators), so dumps compare byte for byte. */
export function pythonJson(value) {
  if (Array.isArray(value)) return '[' + value.map(pythonJson).join(', ') + ']';
  if (value !== null && typeof value === 'object') {
    return '{' + Object.entries(value).map(([k, v]) => JSON.stringify(k) + ': ' + pythonJson(v)).join(', ') + '}';
  }
  return JSON.stringify(value);
}

/** Runs the loop; `onFrame(frame)` for every finished 8-code frame (awaited). Returns the dump (prompt_ids,
 * text_ids, audio_codes, frames) and the reason it ended: "eos", "length" or "context". */
export async function generate(model, promptIds, promptCodes, maxNewTokens, rng, onFrame, features = null) {
  const cfg = model.cfg, n = cfg.num_codebooks, vocab = cfg.audio_vocab_size;
  const dump = { prompt_ids: [...promptIds], text_ids: [], audio_codes: Array.from({ length: n }, () => []), frames: [] };
  const stop = new Array(n).fill(null); // per codebook: index of its first drawn code >= codebook_size
  let textFinished = false, filled = false, token = null, column = null;
  let out = await model.run(promptIds, promptCodes, features); // step 0: the prefill
  for (let step = 0; step < maxNewTokens; step++) {
    if (step > 0) {
      try {
        out = await model.run([token], column.map((c) => [c]));
      } catch (e) {
        if (e instanceof ContextFull) return { dump, reason: 'context' };
        throw e;
      }
    }
    token = sampleText(out.logits, rng); // drawn even after EOS (it consumes random numbers)
    if (textFinished) {
      token = filled ? cfg.text_pad_token_id : cfg.enter_token_id;
      filled = true;
    }
    const audioStep = step - 1; // codebook i starts at step i + 1
    column = [];
    for (let i = 0; i < n; i++) {
      let code = cfg.audio_pad_code;
      if (audioStep >= i) {
        const codes = dump.audio_codes[i];
        code = sampleCode(out.audioLogits.subarray(i * vocab, (i + 1) * vocab), codes.slice(-AUDIO.window), rng);
        if (code >= cfg.codebook_size && stop[i] === null) stop[i] = codes.length;
      }
      dump.audio_codes[i].push(code);
      column.push(code);
    }
    if (textFinished && stop.every((s) => s !== null)) return { dump, reason: 'eos' };
    if (audioStep >= n - 1) { // codebook i's entry for this frame is from step - (n - 1) + i
      const index = Array.from({ length: n }, (_, i) => step - (n - 1) + i);
      if (index.every((k, i) => stop[i] === null || k < stop[i])) {
        const frame = index.map((k, i) => dump.audio_codes[i][k]);
        dump.frames.push(frame);
        await onFrame(frame);
      }
    }
    if (!textFinished) {
      dump.text_ids.push(token);
      textFinished = token === cfg.eos_token_id;
    }
  }
  return { dump, reason: 'length' };
}
