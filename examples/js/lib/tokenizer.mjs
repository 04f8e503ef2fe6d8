// The bundle's tokenizer.json (HF `tokenizers`: added tokens, ByteLevel pre-tokenizer with the GPT-2 split,
// BPE by merge rank, ByteLevel decoder) — only the parts this model's file uses; anything else is refused.

const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's byte -> printable character table (bytes that print as themselves keep their code point). */
function byteTable() {
  const keep = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const toChar = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) toChar[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + extra++);
  return toChar;
}

export class Tokenizer {
  /** `json`: the parsed tokenizer.json. */
  constructor(json) {
    const m = json.model;
    const pre = json.pre_tokenizer;
    if (m.type !== 'BPE' || pre?.type !== 'ByteLevel' || pre.add_prefix_space || !pre.use_regex ||
        json.normalizer || m.continuing_subword_prefix || m.end_of_word_suffix || m.byte_fallback) {
      throw new Error('tokenizer.json is not the plain byte-level BPE this driver implements');
    }
    this.vocab = new Map(Object.entries(m.vocab));
    this.idToToken = [];
    for (const [tok, id] of this.vocab) this.idToToken[id] = tok;
    this.ranks = new Map();
    m.merges.forEach((pair, rank) => {
      const [a, b] = Array.isArray(pair) ? pair : pair.split(' ');
      this.ranks.set(a + ' ' + b, rank);
    });
    this.added = json.added_tokens.map((t) => t.content).sort((a, b) => b.length - a.length);
    this.addedIds = new Map(json.added_tokens.map((t) => [t.content, t.id]));
    this.special = new Set(json.added_tokens.filter((t) => t.special).map((t) => t.id));
    for (const t of json.added_tokens) this.idToToken[t.id] = t.content;
    this.toChar = byteTable();
    this.toByte = new Map(this.toChar.map((c, b) => [c, b]));
    this.cache = new Map();
  }

  /** Token ids of `text`, no special tokens added (added tokens in the text are matched first, longest first). */
  encode(text) {
    const ids = [];
    let start = 0;
    for (let i = 0; i < text.length;) {
      const hit = text[i] === '<' ? this.added.find((t) => text.startsWith(t, i)) : undefined;
      if (hit === undefined) { i++; continue; }
      this.encodePlain(text.slice(start, i), ids);
      ids.push(this.addedIds.get(hit));
      i += hit.length;
      start = i;
    }
    this.encodePlain(text.slice(start), ids);
    return ids;
  }

  encodePlain(text, ids) {
    const utf8 = new TextEncoder();
    for (const [word] of text.matchAll(SPLIT)) {
      const mapped = Array.from(utf8.encode(word), (b) => this.toChar[b]).join('');
      for (const piece of this.bpe(mapped)) {
        const id = this.vocab.get(piece);
        if (id === undefined) throw new Error(`piece ${JSON.stringify(piece)} is not in the vocabulary`);
        ids.push(id);
      }
    }
  }

  /** Merge the lowest-ranked adjacent pair until none is in the merge list (leftmost on ties). */
  bpe(word) {
    const cached = this.cache.get(word);
    if (cached) return cached;
    let parts = Array.from(word);
    for (;;) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i + 1 < parts.length; i++) {
        const r = this.ranks.get(parts[i] + ' ' + parts[i + 1]);
        if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
      }
      if (best < 0) break;
      const a = parts[best], b = parts[best + 1];
      const merged = [];
      for (let i = 0; i < parts.length; i++) {
        if (i + 1 < parts.length && parts[i] === a && parts[i + 1] === b) { merged.push(a + b); i++; } else merged.push(parts[i]);
      }
      parts = merged;
    }
    this.cache.set(word, parts);
    return parts;
  }

  /** Text of `ids`; special added tokens left out (skip_special_tokens), invalid UTF-8 as U+FFFD. */
  decode(ids) {
    const bytes = [];
    for (const id of ids) {
      if (this.special.has(id)) continue;
      const tok = this.idToToken[id];
      if (this.addedIds.has(tok)) { bytes.push(...new TextEncoder().encode(tok)); continue; }
      for (const ch of tok) bytes.push(this.toByte.get(ch));
    }
    return new TextDecoder('utf-8').decode(new Uint8Array(bytes));
  }
}
