// Section 1: a bundle is found through manifest.json; graph files are named by manifest.graphs[].file (an --ort
// bundle holds .ort files). File access is passed in (`readBytes(relativePath)`), so this runs in node or a page.
import { readNpz } from './npz.mjs';
import { Tokenizer } from './tokenizer.mjs';

/** float32 -> nearest float16 (ties to even) -> float32: upstream feeds the speaker embedding as fp16. */
export function roundToHalf(x) {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  if (a >= 65520) return Math.sign(x) * Infinity;
  const e = Math.max(Math.floor(Math.log2(a)), -14); // subnormals share the exponent of the smallest normal
  let q = 2 ** (e - 10); // spacing of float16 values at this exponent
  if (a >= 2 ** (e + 1)) q *= 2; // log2 rounded up at a power of two
  const m = a / q, low = Math.floor(m), frac = m - low;
  const even = frac > 0.5 || (frac === 0.5 && low % 2 === 1) ? low + 1 : low;
  return Math.sign(x) * even * q;
}

const SHARED_WEIGHTS = ['static_weights.bin']; // section 1: weights files the graphs may refer to

export class Bundle {
  /** `readBytes(path)` -> Uint8Array (async); `createSession(file, external)` -> an onnxruntime InferenceSession for
   * the bundle's file `file`; `external` lists the bundle files its weights may be in (onnx external data: a static
   * bundle's graphs share static_weights.bin). Opened by path, onnxruntime finds them beside the graph; from bytes
   * they go in the session options' `externalData`. */
  static async open(readBytes, createSession) {
    const b = new Bundle();
    const text = async (p) => new TextDecoder().decode(await readBytes(p));
    b.readBytes = readBytes;
    b.manifest = JSON.parse(await text('manifest.json'));
    if (b.manifest.format_version !== 1) throw new Error(`bundle format ${b.manifest.format_version}, this driver reads 1`);
    b.config = b.manifest.config;
    b.static = b.manifest.static ?? null;
    b.tokenizer = new Tokenizer(JSON.parse(await text('tokenizer.json')));
    b.sessions = {};
    const wanted = ['thinker', 'talker', 'thinker_prefill', 'talker_prefill', 'mimi_decoder'];
    const external = SHARED_WEIGHTS.filter((f) => f in (b.manifest.files ?? {}));
    for (const name of wanted.filter((g) => g in b.manifest.graphs)) {
      b.sessions[name] = await createSession(b.manifest.graphs[name].file, external);
    }
    return b;
  }

  /** Section 5: {refCodes: 8 arrays of R codes, spkEmb: Float32Array [192] rounded through float16}. */
  async voice(name) {
    const names = this.manifest.voices ?? [];
    if (!names.includes(name)) throw new Error(`unknown voice "${name}"; this bundle has: ${names.join(', ')}`);
    const z = await readNpz(await this.readBytes(`voices/${name}.npz`));
    const [rows, frames] = z.ref_codes.shape;
    const refCodes = Array.from({ length: rows }, (_, i) => Array.from(z.ref_codes.data.subarray(i * frames, (i + 1) * frames), Number));
    return { refCodes, spkEmb: Float32Array.from(z.spk_emb.data, roundToHalf) };
  }
}
