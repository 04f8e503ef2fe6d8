// numpy.random.default_rng(seed).random(), bit for bit: SeedSequence -> PCG64 (XSL-RR 128/64) -> 53-bit double.
// Constants and the algorithm are numpy's (bit_generator.pyx, pcg64.h); seeded sampling needs the same stream.

const MASK32 = 0xffffffffn;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const PCG_MULT = (2549297995355413924n << 64n) + 4865540595714422341n;

const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715, POOL_SIZE = 4;

/** A non-negative integer seed as numpy splits it: 32-bit words, least significant first ([0] for 0). */
function seedWords(seed) {
  let s = BigInt(seed);
  if (s < 0n) throw new Error(`seed must be >= 0, got ${seed}`);
  const words = [];
  do { words.push(Number(s & MASK32)); s >>= 32n; } while (s > 0n);
  return words;
}

/** SeedSequence(seed).generate_state(nWords64, uint64) as BigInts. */
export function seedSequenceState(seed, nWords64) {
  const entropy = seedWords(seed);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    value = Math.imul(value, hashConst) >>> 0;
    return (value ^ (value >>> 16)) >>> 0;
  };
  const mix = (x, y) => {
    const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };
  const pool = new Array(POOL_SIZE);
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < entropy.length ? entropy[i] : 0);
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  }
  for (let src = POOL_SIZE; src < entropy.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  }
  let h = INIT_B;
  const words32 = [];
  for (let i = 0; i < 2 * nWords64; i++) {
    let v = (pool[i % POOL_SIZE] ^ h) >>> 0;
    h = Math.imul(h, MULT_B) >>> 0;
    v = Math.imul(v, h) >>> 0;
    words32.push((v ^ (v >>> 16)) >>> 0);
  }
  const out = [];
  for (let i = 0; i < nWords64; i++) out.push(BigInt(words32[2 * i]) | (BigInt(words32[2 * i + 1]) << 32n));
  return out;
}

/** numpy's PCG64 bit generator with Generator.random() on top. */
export class Pcg64Random {
  constructor(seed) {
    const [s0, s1, i0, i1] = seedSequenceState(seed, 4);
    const initState = (s0 << 64n) | s1;
    const initSeq = (i0 << 64n) | i1;
    this.state = 0n;
    this.inc = ((initSeq << 1n) | 1n) & MASK128;
    this.step();
    this.state = (this.state + initState) & MASK128;
    this.step();
  }

  step() {
    this.state = (this.state * PCG_MULT + this.inc) & MASK128;
  }

  nextUint64() {
    this.step();
    const hi = this.state >> 64n, lo = this.state & MASK64;
    const x = hi ^ lo;
    const rot = Number(this.state >> 122n);
    return ((x >> BigInt(rot)) | (x << BigInt((64 - rot) & 63))) & MASK64;
  }

  /** A double in [0, 1): the top 53 bits of one 64-bit output. */
  random() {
    return Number(this.nextUint64() >> 11n) / 9007199254740992;
  }
}
