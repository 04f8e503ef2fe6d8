// Sections 3, 5, 11 and 12: feeding positions through the Thinker, then the Talker, with KV caches preallocated to
// the context. `DynamicModel` drives the default bundle (past = the cache's first n positions); `StaticModel` the
// fixed-shape one (whole heads-first buffers + position/length, prompts in fixed chunks through the `*_prefill` graphs).

export class ContextFull extends Error {}

/** Per layer, K and V of every position so far: Float32Array [1, context, kvHeads, headDim], filled to `length`. */
class KVCache {
  constructor(layers, context, kvHeads, headDim) {
    this.row = kvHeads * headDim;
    this.dims = [kvHeads, headDim];
    this.keys = Array.from({ length: layers }, () => new Float32Array(context * this.row));
    this.values = Array.from({ length: layers }, () => new Float32Array(context * this.row));
    this.context = context;
    this.length = 0;
  }

  /** The past_* feeds: the first `n` positions. */
  pastFeeds(ort, n) {
    const feeds = {};
    this.keys.forEach((k, i) => {
      feeds[`past_key_${i}`] = new ort.Tensor('float32', k.subarray(0, n * this.row), [1, n, ...this.dims]);
      feeds[`past_value_${i}`] = new ort.Tensor('float32', this.values[i].subarray(0, n * this.row), [1, n, ...this.dims]);
    });
    return feeds;
  }

  /** Write the first `count` positions of the present_* outputs at the current length. */
  append(outputs, count) {
    this.keys.forEach((k, i) => {
      k.set(outputs[`present_key_${i}`].data.subarray(0, count * this.row), this.length * this.row);
      this.values[i].set(outputs[`present_value_${i}`].data.subarray(0, count * this.row), this.length * this.row);
    });
    this.length += count;
  }
}

/** A static bundle's cache (section 12): per layer, K and V buffers [1, kvHeads, context, headDim] fed whole; each
 * call returns them with the chunk's rows written (present_*), which become the next call's buffers. */
class BufferKV {
  constructor(layers, context, kvHeads, headDim) {
    this.dims = [1, kvHeads, context, headDim];
    this.keys = Array.from({ length: layers }, () => new Float32Array(kvHeads * context * headDim));
    this.values = Array.from({ length: layers }, () => new Float32Array(kvHeads * context * headDim));
    this.context = context;
    this.length = 0;
  }

  pastFeeds(ort) {
    const feeds = {};
    this.keys.forEach((k, i) => {
      feeds[`past_key_${i}`] = new ort.Tensor('float32', k, this.dims);
      feeds[`past_value_${i}`] = new ort.Tensor('float32', this.values[i], this.dims);
    });
    return feeds;
  }

  /** Take the present_* buffers (the graph wrote the `count` new rows, and kept the filled ones). */
  append(outputs, count) {
    this.keys = this.keys.map((_, i) => outputs[`present_key_${i}`].data);
    this.values = this.values.map((_, i) => outputs[`present_value_${i}`].data);
    this.length += count;
  }
}

const int64 = (ort, values, dims) => new ort.Tensor('int64', BigInt64Array.from(values, (v) => BigInt(v)), dims);
const bool = (ort, values, dims) => new ort.Tensor('bool', Uint8Array.from(values, (v) => (v ? 1 : 0)), dims);

/** Thinker + Talker over new positions; `spkEmb` Float32Array [192] (already rounded through float16) or null. */
class Model {
  constructor(ort, bundle, context, spkEmb) {
    const c = bundle.config;
    this.ort = ort;
    this.cfg = c;
    this.context = context;
    const Cache = bundle.static ? BufferKV : KVCache;
    this.thinkerKV = new Cache(c.num_hidden_layers, context, c.num_key_value_heads, c.head_dim);
    this.talkerKV = new Cache(c.num_talker_hidden_layers, context, c.talker_num_key_value_heads, c.talker_head_dim);
    this.hasSpk = spkEmb !== null;
    this.spkEmb = new ort.Tensor('float32', spkEmb ?? new Float32Array(c.spk_emb_size), [1, c.spk_emb_size]);
  }

  /** ids: T text ids; codes: 8 arrays of T codes; features: {embeds Float32Array [T*hidden], mask bool[T]} or null.
   * Returns {logits Float32Array [vocab], audioLogits Float32Array [8 * audio_vocab]}. */
  async run(ids, codes, features = null) {
    if (this.thinkerKV.length + ids.length > this.context) throw new ContextFull();
    return this.feed(ids, codes, features);
  }

  /** The graph inputs of positions [a, b) of a call, `size` rows (zero rows pad a static chunk). */
  inputs(ids, codes, features, a, b, size) {
    const ort = this.ort, c = this.cfg, t = b - a, n = c.num_codebooks;
    const embeds = new Float32Array(size * c.hidden_size);
    const mask = new Array(size).fill(false);
    if (features !== null) {
      embeds.set(features.embeds.subarray(a * c.hidden_size, b * c.hidden_size));
      for (let k = 0; k < t; k++) mask[k] = features.mask[a + k];
    }
    const idRow = new Array(size).fill(0), codeRows = new Array(n * size).fill(0), spk = new Array(size).fill(false);
    for (let k = 0; k < t; k++) {
      idRow[k] = ids[a + k];
      for (let i = 0; i < n; i++) codeRows[i * size + k] = codes[i][a + k];
      spk[k] = this.hasSpk && codes[0][a + k] === c.audio_spk_code;
    }
    return {
      thinker: { input_ids: int64(ort, idRow, [1, size]),
        feature_embeds: new ort.Tensor('float32', embeds, [1, size, c.hidden_size]), feature_mask: bool(ort, mask, [1, size]) },
      talker: { codes: int64(ort, codeRows, [1, n, size]), spk_mask: bool(ort, spk, [1, size]), spk_emb: this.spkEmb },
    };
  }
}

export class DynamicModel extends Model {
  constructor(ort, bundle, context, spkEmb) {
    super(ort, bundle, context, spkEmb);
    this.thinker = bundle.sessions.thinker;
    this.talker = bundle.sessions.talker;
  }

  async feed(ids, codes, features) {
    const t = ids.length, inp = this.inputs(ids, codes, features, 0, t, t);
    const n = this.thinkerKV.length;
    const th = await this.thinker.run({ ...inp.thinker, ...this.thinkerKV.pastFeeds(this.ort, n) });
    const ta = await this.talker.run({ ...inp.talker, bridge: th.bridge, ...this.talkerKV.pastFeeds(this.ort, n) });
    this.thinkerKV.append(th, t);
    this.talkerKV.append(ta, t);
    return { logits: th.logits.data, audioLogits: ta.audio_logits.data };
  }
}

export class StaticModel extends Model {
  /** The context is the bundle's (`static.context`); `prefill_chunk` 1 means no prefill graphs. */
  constructor(ort, bundle, spkEmb) {
    super(ort, bundle, bundle.manifest.static.context, spkEmb);
    this.sessions = bundle.sessions;
    this.chunk = this.sessions.thinker_prefill ? bundle.manifest.static.prefill_chunk : 1;
  }

  /** A padded chunk must fit the buffer: positions after the last whole chunk that fits go one by one. */
  async feed(ids, codes, features) {
    let out;
    for (let a = 0; a < ids.length;) {
      const b = Math.min(a + (this.thinkerKV.length + this.chunk <= this.context ? this.chunk : 1), ids.length);
      out = await this.feedChunk(ids, codes, features, a, b);
      a = b;
    }
    return out;
  }

  /** One graph call per model; a chunk of one position goes through the decode graphs, as the runtime does. */
  async feedChunk(ids, codes, features, a, b) {
    const ort = this.ort, t = b - a, size = t > 1 ? this.chunk : 1, suffix = t > 1 ? '_prefill' : '';
    const inp = this.inputs(ids, codes, features, a, b, size);
    const where = (kv) => ({ position: int64(ort, [kv.length], [1]), length: int64(ort, [t], [1]), ...kv.pastFeeds(ort) });
    const th = await this.sessions['thinker' + suffix].run({ ...inp.thinker, ...where(this.thinkerKV) });
    const h = this.cfg.hidden_size;
    const bridge = new Float32Array(size * h); // the real rows; padding rows zero, as the runtime pads them
    bridge.set(th.bridge.data.subarray(0, t * h));
    const ta = await this.sessions['talker' + suffix].run({ ...inp.talker, bridge: new ort.Tensor('float32', bridge, [1, size, h]),
      ...where(this.talkerKV) });
    this.thinkerKV.append(th, t);
    this.talkerKV.append(ta, t);
    return { logits: th.logits.data, audioLogits: ta.audio_logits.data };
  }
}
