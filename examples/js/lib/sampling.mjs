// Section 7: text and audio sampling, drawing exactly what omni-run draws for the same seed. Every operation is the
// runtime's numpy one: float32 arithmetic on logits (numpy >= 2 rules), softmax in float64 with numpy's pairwise
// sum, one uniform double per draw, inverse CDF over the candidates in the order given.

export const TEXT = { temperature: 0.7, topP: 0.85 };
export const AUDIO = { temperature: 0.2, topK: 50, penalty: 1.05, window: 3 };

const f32 = Math.fround;

/** numpy's pairwise summation of a float64 array (what `ndarray.sum()` computes, bit for bit). */
export function pairwiseSum(a, lo = 0, n = a.length) {
  if (n < 8) {
    let r = -0;
    for (let i = 0; i < n; i++) r += a[lo + i];
    return r;
  }
  if (n <= 128) {
    const r = Array.from({ length: 8 }, (_, j) => a[lo + j]);
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += a[lo + i + j];
    let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[lo + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwiseSum(a, lo, n2) + pairwiseSum(a, lo + n2, n - n2);
}

/** float64 softmax of float32 scores: exp(z - max) with the subtraction in float32. */
export function softmax(z) {
  let m = -Infinity;
  for (const v of z) if (v > m) m = v;
  const e = Float64Array.from(z, (v) => Math.exp(f32(v - m)));
  const s = pairwiseSum(e);
  return e.map((v) => v / s);
}

/** Inverse-CDF draw with one uniform number: the first index whose running sum exceeds u * total. */
export function draw(probs, rng) {
  const cdf = new Float64Array(probs.length);
  let acc = 0;
  probs.forEach((p, i) => { acc += p; cdf[i] = acc; });
  const u = rng.random() * cdf[cdf.length - 1];
  let lo = 0, hi = cdf.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (cdf[mid] <= u) lo = mid + 1; else hi = mid; }
  return Math.min(lo, cdf.length - 1);
}

function argmax(z) {
  let best = 0;
  for (let i = 1; i < z.length; i++) if (z[i] > z[best]) best = i;
  return best;
}

/** Indices by descending score, ties by ascending index (numpy's stable argsort of -z). */
function descending(z, idx) {
  return idx.sort((a, b) => (z[b] - z[a]) || (a - b));
}

/** One text token from `logits` (Float32Array [vocab]); `rng` null: greedy. Top-p keeps the crossing token; the
 * draw walks the kept tokens in vocabulary-id order. */
export function sampleText(logits, rng) {
  const t = f32(TEXT.temperature + 1e-9);
  const z = Float32Array.from(logits, (v) => v / t);
  if (rng === null) return argmax(z);
  const order = descending(z, Array.from(z, (_, i) => i));
  const p = softmax(order.map((i) => z[i]));
  let cum = 0, crossed = false;
  for (let k = 0; k < order.length; k++) {
    if (crossed) z[order[k]] = -Infinity; // every token after the one whose running sum crossed top_p
    cum += p[k];
    crossed = crossed || cum > TEXT.topP;
  }
  return draw(softmax(z), rng);
}

/** One audio code from one codebook's `logits` (Float32Array [audio_vocab]); `recent`: its last codes, oldest
 * first, pads included (each occurrence penalised again); `rng` null: greedy. */
export function sampleCode(logits, recent, rng) {
  const t = f32(AUDIO.temperature), penalty = f32(AUDIO.penalty);
  const z = Float32Array.from(logits, (v) => v / t);
  for (const c of recent) z[c] = z[c] > 0 ? z[c] / penalty : z[c] * penalty;
  if (rng === null) return argmax(z);
  const top = descending(z, Array.from(z, (_, i) => i)).slice(0, AUDIO.topK);
  return top[draw(softmax(top.map((i) => z[i])), rng)];
}
