// Section 8: streaming Mimi decoding (one frame -> frame_samples of 24 kHz audio, all state explicit) and the
// 16-bit WAV omni-run writes.

export class MimiStream {
  constructor(ort, session, dims) {
    this.ort = ort;
    this.session = session;
    this.dims = dims;
    this.ringShape = [1, dims.num_heads, dims.kv_window, dims.head_dim];
    const ringSize = dims.num_heads * dims.kv_window * dims.head_dim;
    this.keys = Array.from({ length: dims.num_layers }, () => new Float32Array(ringSize));
    this.values = Array.from({ length: dims.num_layers }, () => new Float32Array(ringSize));
    this.convs = dims.conv_states.map(([c, k]) => new ort.Tensor('float32', new Float32Array(c * k), [1, c, k]));
    this.position = 0;
  }

  /** Audio of F consecutive frames in one call (Float32Array [F * frame_samples]); codes >= 2049 (pad, stop,
   * speaker) decode as 0. */
  async decode(frames) {
    const ort = this.ort, d = this.dims, n = frames.length, cb = frames[0].length;
    const codes = new BigInt64Array(cb * n); // [1, 8, F]: codebook-major
    frames.forEach((frame, f) => frame.forEach((c, i) => { codes[i * n + f] = BigInt(c >= 2049 ? 0 : c); }));
    const feeds = {
      codes: new ort.Tensor('int64', codes, [1, cb, n]),
      position: new ort.Tensor('int64', BigInt64Array.of(BigInt(this.position)), [1]),
    };
    for (let i = 0; i < d.num_layers; i++) {
      feeds[`past_key_${i}`] = new ort.Tensor('float32', this.keys[i], this.ringShape);
      feeds[`past_value_${i}`] = new ort.Tensor('float32', this.values[i], this.ringShape);
    }
    this.convs.forEach((c, j) => { feeds[`past_conv_${j}`] = c; });
    const out = await this.session.run(feeds);
    const steps = d.steps_per_frame * n, hd = d.head_dim;
    for (let i = 0; i < d.num_layers; i++) {
      for (const [ring, name] of [[this.keys[i], `present_key_${i}`], [this.values[i], `present_value_${i}`]]) {
        const present = out[name].data; // [1, heads, steps, head_dim]
        for (let h = 0; h < d.num_heads; h++) {
          for (let t = 0; t < steps; t++) {
            const slot = (this.position + t) % d.kv_window;
            ring.set(present.subarray((h * steps + t) * hd, (h * steps + t + 1) * hd), (h * d.kv_window + slot) * hd);
          }
        }
      }
    }
    this.convs = this.convs.map((_, j) => out[`present_conv_${j}`]);
    this.position += steps;
    return out.audio.data;
  }
}

/** An answer's first frame alone, then `perCall` frames per call (1 for a static bundle, whose graph takes one),
 * the rest at `flush` (section 8: omni-run's calls, so its bytes). */
export class FrameBatcher {
  constructor(mimi, perCall) {
    this.mimi = mimi;
    this.perCall = Math.min(perCall, Math.floor(mimi.dims.kv_window / mimi.dims.steps_per_frame));
    this.pending = [];
  }

  /** Audio when a call is due, else null. */
  async push(frame) {
    this.pending.push(frame);
    return this.pending.length === (this.mimi.position === 0 ? 1 : this.perCall) ? this.flush() : null;
  }

  async flush() {
    const frames = this.pending;
    this.pending = [];
    return frames.length ? this.mimi.decode(frames) : null;
  }
}

/** 16-bit little-endian PCM: floor(x * 32768) clamped to the int16 range (what omni-run's writer does). */
export function pcm16(audio) {
  const out = new Int16Array(audio.length);
  audio.forEach((x, i) => { out[i] = Math.min(32767, Math.max(-32768, Math.floor(x * 32768))); });
  return new Uint8Array(out.buffer);
}

/** The 44-byte header of a mono 16-bit PCM WAV holding `dataBytes` bytes of samples. */
export function wavHeader(sampleRate, dataBytes) {
  const b = new DataView(new ArrayBuffer(44));
  const ascii = (at, s) => [...s].forEach((ch, k) => b.setUint8(at + k, ch.charCodeAt(0)));
  ascii(0, 'RIFF'); b.setUint32(4, 36 + dataBytes, true); ascii(8, 'WAVE');
  ascii(12, 'fmt '); b.setUint32(16, 16, true); b.setUint16(20, 1, true); b.setUint16(22, 1, true);
  b.setUint32(24, sampleRate, true); b.setUint32(28, sampleRate * 2, true); b.setUint16(32, 2, true); b.setUint16(34, 16, true);
  ascii(36, 'data'); b.setUint32(40, dataBytes, true);
  return new Uint8Array(b.buffer);
}
