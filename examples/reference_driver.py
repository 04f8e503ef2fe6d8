"""Reference driver for an omni-onnx bundle: a text question in, the spoken answer out.

It follows docs/step-protocol.md step by step and uses only onnxruntime, numpy and tokenizers (plus the standard
library), never the omni_onnx package, so it can be read as a porting guide: every function here is one section of
the document, written plainly so that it translates line by line to Kotlin, Swift or C++.

    python examples/reference_driver.py --bundle BUNDLE --text "Why is the sky blue?" --greedy \
        --out answer.wav --dump-codes answer.json

Covered: the dynamic-shape bundle that `omni-export` writes, text questions, voice presets, greedy or seeded
sampling, streaming Mimi decoding. Not covered (see the document): speech and image input, thinking mode, several
turns.
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

# Section 4: upstream's voice-clone system prompt (eval_omni.py), used whenever a voice preset is chosen.
VOICE_SYSTEM_PROMPT = "你是一个专业的语音助手，请用给定的音色风格来回答用户的问题。请尽量详细地回答，给出有价值的信息。"

# Section 7: the released sampling settings.
TEXT_TEMPERATURE, TEXT_TOP_P = 0.7, 0.85
AUDIO_TEMPERATURE, AUDIO_TOP_K, AUDIO_PENALTY, AUDIO_PENALTY_WINDOW = 0.2, 50, 1.05, 3

# Section 8: frames per Mimi call after an answer's first (at most kv_window / steps_per_frame).
FRAMES_PER_CALL = 4


# ---------------------------------------------------------------------------------------------------------------
# Section 1: the bundle


class Graph:
    """One ONNX graph; `run` takes and returns dicts keyed by tensor name."""

    def __init__(self, path: Path):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


class Bundle:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest = json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))
        if self.manifest.get("format_version") != 1:
            raise SystemExit(f"{root}: bundle format {self.manifest.get('format_version')}, this driver reads 1")
        if self.manifest.get("static") is not None:
            raise SystemExit(f"{root} is a static-shape bundle; this driver drives the dynamic one (see section 12)")
        self.cfg = self.manifest["config"]
        self.mimi_dims = self.manifest.get("mimi")  # None when the bundle has no Mimi decoder
        self.tokenizer = Tokenizer.from_file(str(self.root / "tokenizer.json"))
        self.thinker = self.graph("thinker")
        self.talker = self.graph("talker")
        self.mimi = self.graph("mimi_decoder") if self.mimi_dims is not None else None

    def graph(self, name: str) -> Graph:
        return Graph(self.root / self.manifest["graphs"][name]["file"])

    def voice(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Section 5: (ref_codes int64 [8, frames], spk_emb float32 [1, 192] rounded through float16)."""
        if name not in self.manifest.get("voices", []):
            raise SystemExit(f"unknown voice {name!r}; this bundle has: {', '.join(self.manifest.get('voices', []))}")
        with np.load(self.root / "voices" / f"{name}.npz") as z:
            ref_codes = z["ref_codes"].astype(np.int64)
            spk_emb = z["spk_emb"].astype(np.float16).astype(np.float32).reshape(1, -1)
        return ref_codes, spk_emb


# ---------------------------------------------------------------------------------------------------------------
# Section 4: the prompt


def chat_prompt(question: str, with_voice: bool) -> str:
    """The chat template with the generation prompt of non-thinking mode."""
    text = ""
    if with_voice:
        text += f"<|im_start|>system\n{VOICE_SYSTEM_PROMPT}<|im_end|>\n"
    text += f"<|im_start|>user\n{question}<|im_end|>\n"
    text += "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    return text


def prompt_code_rows(cfg: dict, prompt_len: int, ref_codes: np.ndarray | None, has_spk: bool) -> np.ndarray:
    """The 8 code rows under the prompt, int64 [8, prompt_len]: pads, then the voice's reference codes
    right-aligned (ending at the last prompt position), with the speaker code in the column before them."""
    rows = np.full((cfg["num_codebooks"], prompt_len), cfg["audio_pad_code"], np.int64)
    ref_len = 0 if ref_codes is None else ref_codes.shape[1]
    fill_start = max(1 if has_spk else 0, prompt_len - ref_len)
    if ref_codes is not None and fill_start < prompt_len:
        rows[:, fill_start:] = ref_codes[:, ref_len - (prompt_len - fill_start):]
    if has_spk and fill_start > 0:
        rows[:, fill_start - 1] = cfg["audio_spk_code"]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Section 3: Thinker + Talker over new positions, with KV caches preallocated to the context


class KVCache:
    """Per layer, K and V of every position so far: [1, context, kv_heads, head_dim], filled up to `length`."""

    def __init__(self, layers: int, context: int, kv_heads: int, head_dim: int):
        self.keys = [np.zeros((1, context, kv_heads, head_dim), np.float32) for _ in range(layers)]
        self.values = [np.zeros((1, context, kv_heads, head_dim), np.float32) for _ in range(layers)]
        self.length = 0

    def past_feeds(self) -> dict[str, np.ndarray]:
        feeds = {}
        for i in range(len(self.keys)):
            feeds[f"past_key_{i}"] = self.keys[i][:, :self.length]
            feeds[f"past_value_{i}"] = self.values[i][:, :self.length]
        return feeds

    def append(self, outputs: dict[str, np.ndarray], count: int) -> None:
        for i in range(len(self.keys)):
            self.keys[i][:, self.length:self.length + count] = outputs[f"present_key_{i}"]
            self.values[i][:, self.length:self.length + count] = outputs[f"present_value_{i}"]
        self.length += count


class ContextFull(Exception):
    pass


class Model:
    """Feeds positions (a text id and a code column each) through the Thinker, then the Talker."""

    def __init__(self, bundle: Bundle, context: int, spk_emb: np.ndarray | None):
        cfg = bundle.cfg
        self.bundle, self.cfg, self.context = bundle, cfg, context
        self.thinker_kv = KVCache(cfg["num_hidden_layers"], context, cfg["num_key_value_heads"], cfg["head_dim"])
        self.talker_kv = KVCache(cfg["num_talker_hidden_layers"], context, cfg["talker_num_key_value_heads"],
                                 cfg["talker_head_dim"])
        self.has_spk = spk_emb is not None
        self.spk_emb = spk_emb if spk_emb is not None else np.zeros((1, cfg["spk_emb_size"]), np.float32)

    def run(self, ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [T], codes int64 [8, T] -> (text logits [vocab], audio logits [8, audio_vocab])."""
        count = len(ids)
        if self.thinker_kv.length + count > self.context:  # section 11: the turn stops here
            raise ContextFull()
        thinker_out = self.bundle.thinker.run({
            "input_ids": ids.reshape(1, count),
            "feature_embeds": np.zeros((1, count, self.cfg["hidden_size"]), np.float32),  # no speech/image input
            "feature_mask": np.zeros((1, count), bool),
            **self.thinker_kv.past_feeds(),
        })
        spk_mask = (codes[0] == self.cfg["audio_spk_code"]) & self.has_spk
        talker_out = self.bundle.talker.run({
            "bridge": thinker_out["bridge"],
            "codes": codes.reshape(1, self.cfg["num_codebooks"], count),
            "spk_mask": spk_mask.reshape(1, count),
            "spk_emb": self.spk_emb,
            **self.talker_kv.past_feeds(),
        })
        self.thinker_kv.append(thinker_out, count)
        self.talker_kv.append(talker_out, count)
        return thinker_out["logits"][0], talker_out["audio_logits"][0]


# ---------------------------------------------------------------------------------------------------------------
# Section 7: sampling. With a numpy Generator these draw exactly what omni-run draws for the same seed.


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(), dtype=np.float64)
    return e / e.sum()


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw with one uniform number."""
    cdf = np.cumsum(probs, dtype=np.float64)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def sample_text(logits: np.ndarray, rng: np.random.Generator | None) -> int:
    """Temperature, then top-p (the token that crosses top_p is kept); greedy: argmax."""
    z = logits.astype(np.float32) / np.float32(TEXT_TEMPERATURE + 1e-9)
    if rng is None:
        return int(np.argmax(z))
    order = np.argsort(-z, kind="stable")
    crossed = np.cumsum(softmax(z[order])) > TEXT_TOP_P
    drop = np.concatenate([[False], crossed[:-1]])  # shift right by one: keep the crossing token
    z[order[drop]] = -np.inf
    return draw(softmax(z), rng)


def sample_code(logits: np.ndarray, recent: list[int], rng: np.random.Generator | None) -> int:
    """Temperature, repetition penalty once per occurrence in `recent` (pads count), then top-k; greedy: argmax."""
    z = logits.astype(np.float32) / np.float32(AUDIO_TEMPERATURE)
    for code in recent:
        z[code] = z[code] / AUDIO_PENALTY if z[code] > 0 else z[code] * AUDIO_PENALTY
    if rng is None:
        return int(np.argmax(z))
    top = np.argpartition(-z, AUDIO_TOP_K)[:AUDIO_TOP_K]
    top = top[np.argsort(-z[top], kind="stable")]
    return int(top[draw(softmax(z[top]), rng)])


# ---------------------------------------------------------------------------------------------------------------
# Section 6: the generation loop


def generate(model: Model, prompt_ids: list[int], prompt_codes: np.ndarray, max_new_tokens: int,
             rng: np.random.Generator | None, on_frame, trace: list | None = None) -> dict:
    """Runs the loop; calls `on_frame(frame)` for every finished 8-code frame. Returns the dump plus the reason
    the loop ended ("eos", "length" or "context")."""
    cfg = model.cfg
    n = cfg["num_codebooks"]
    pad, eos = cfg["audio_pad_code"], cfg["eos_token_id"]
    dump = {"prompt_ids": list(prompt_ids), "text_ids": [], "audio_codes": [[] for _ in range(n)], "frames": []}
    stop = [None] * n  # per codebook: index of its first drawn code >= codebook_size
    text_finished, filled = False, False
    token, column = None, None  # what the previous step produced: the next position's input

    logits, audio_logits = model.run(np.array(prompt_ids, np.int64), prompt_codes)  # step 0: the prefill
    for step in range(max_new_tokens):
        if step > 0:
            try:
                logits, audio_logits = model.run(np.array([token], np.int64), np.array(column, np.int64)[:, None])
            except ContextFull:
                return {**dump, "reason": "context"}
        fed = "prompt" if step == 0 else (token, list(column))
        token = sample_text(logits, rng)  # drawn even after EOS (it consumes random numbers)
        if text_finished:
            token = cfg["enter_token_id"] if not filled else cfg["text_pad_token_id"]
            filled = True

        audio_step = step - 1  # codebook i starts at step i + 1
        column = []
        for i in range(n):
            if audio_step >= i:
                code = sample_code(audio_logits[i], dump["audio_codes"][i][-AUDIO_PENALTY_WINDOW:], rng)
                if code >= cfg["codebook_size"] and stop[i] is None:
                    stop[i] = len(dump["audio_codes"][i])
            else:
                code = pad
            dump["audio_codes"][i].append(code)
            column.append(code)

        if text_finished and all(s is not None for s in stop):
            return {**dump, "reason": "eos"}

        frame = None
        if audio_step >= n - 1:  # codebook i's code from step - (n - 1) + i
            index = [step - (n - 1) + i for i in range(n)]
            if all(stop[i] is None or index[i] < stop[i] for i in range(n)):
                frame = [dump["audio_codes"][i][index[i]] for i in range(n)]
        if trace is not None:
            trace.append((step, fed, token, list(column), frame))
        if frame is not None:
            dump["frames"].append(frame)
            on_frame(frame)
        if not text_finished:
            dump["text_ids"].append(token)
            text_finished = token == eos
    return {**dump, "reason": "length"}


# ---------------------------------------------------------------------------------------------------------------
# Section 8: streaming Mimi decoding, one frame -> frame_samples of audio


class MimiStream:
    """All decoder state is explicit: a KV ring of kv_window slots per layer, conv states, a position counter."""

    def __init__(self, graph: Graph, dims: dict):
        self.graph, self.dims = graph, dims
        ring = (1, dims["num_heads"], dims["kv_window"], dims["head_dim"])
        self.keys = [np.zeros(ring, np.float32) for _ in range(dims["num_layers"])]
        self.values = [np.zeros(ring, np.float32) for _ in range(dims["num_layers"])]
        self.convs = [np.zeros((1, c, k), np.float32) for c, k in dims["conv_states"]]
        self.position = 0

    def decode(self, frames: list[list[int]]) -> np.ndarray:
        """F consecutive frames in one call -> F x frame_samples of audio."""
        codes = np.array([[0 if c >= 2049 else c for c in frame] for frame in frames], np.int64).T  # [8, F]
        feeds = {"codes": codes[None], "position": np.array([self.position], np.int64)}
        for i in range(self.dims["num_layers"]):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = self.keys[i], self.values[i]
        for j, conv in enumerate(self.convs):
            feeds[f"past_conv_{j}"] = conv
        out = self.graph.run(feeds)
        steps = self.dims["steps_per_frame"] * len(frames)
        slots = [(self.position + t) % self.dims["kv_window"] for t in range(steps)]
        for i in range(self.dims["num_layers"]):
            self.keys[i][:, :, slots] = out[f"present_key_{i}"]
            self.values[i][:, :, slots] = out[f"present_value_{i}"]
        self.convs = [out[f"present_conv_{j}"] for j in range(len(self.convs))]
        self.position += steps
        return out["audio"].reshape(-1)


class FrameBatcher:
    """The answer's first frame alone, then FRAMES_PER_CALL frames per call, the rest when the answer ends
    (section 8: omni-run's calls, so its bytes)."""

    def __init__(self, mimi: MimiStream):
        self.mimi, self.pending = mimi, []
        self.per_call = min(FRAMES_PER_CALL, mimi.dims["kv_window"] // mimi.dims["steps_per_frame"])

    def push(self, frame: list[int]) -> np.ndarray | None:
        self.pending.append(frame)
        return self.flush() if len(self.pending) == (1 if self.mimi.position == 0 else self.per_call) else None

    def flush(self) -> np.ndarray | None:
        frames, self.pending = self.pending, []
        return self.mimi.decode(frames) if frames else None


def pcm16(audio: np.ndarray) -> bytes:
    """16-bit little-endian PCM: floor(x * 32768), clipped to the int16 range (what omni-run's WAV writer does)."""
    return np.clip(np.floor(audio.astype(np.float64) * 32768), -32768, 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------------------------------------------------------


def format_trace(trace: list, prompt_len: int) -> str:
    """The worked example's table (docs/step-protocol.md, section 10)."""
    lines = ["| step | position(s) fed | text id fed | code column fed | text out | codes out (cb 0..7) | frame |",
             "|---|---|---|---|---|---|---|"]
    for step, fed, token, column, frame in trace:
        if fed == "prompt":
            where, fed_id, fed_col = f"0..{prompt_len - 1}", "prompt", "prompt rows"
        else:
            where, fed_id, fed_col = str(prompt_len + step - 1), str(fed[0]), " ".join(map(str, fed[1]))
        shown = "–" if frame is None else " ".join(map(str, frame))
        lines.append(f"| {step} | {where} | {fed_id} | {fed_col} | {token} | {' '.join(map(str, column))} "
                     f"| {shown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--text", required=True, help="the question")
    p.add_argument("--voice", help="a voice preset listed in the manifest")
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="numpy seed for sampling (ignored with --greedy)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--context", type=int, default=2048, help="positions the KV caches hold (prompt + answer)")
    p.add_argument("--out", type=Path, help="write the spoken answer here (16-bit WAV)")
    p.add_argument("--dump-codes", type=Path, help="write ids and codes as JSON (omni-run's --dump-codes format)")
    p.add_argument("--trace", type=int, default=0, help="print the first N steps as a table")
    args = p.parse_args(argv)

    bundle = Bundle(args.bundle)
    cfg = bundle.cfg
    ref_codes, spk_emb = bundle.voice(args.voice) if args.voice else (None, None)
    question = args.text.strip()
    prompt_ids = bundle.tokenizer.encode(chat_prompt(question, args.voice is not None), add_special_tokens=False).ids
    if len(prompt_ids) >= args.context:
        print(f"error: the prompt is {len(prompt_ids)} tokens but the context holds {args.context}; "
              f"start a new conversation or raise --context", file=sys.stderr)
        return 1
    prompt_codes = prompt_code_rows(cfg, len(prompt_ids), ref_codes, spk_emb is not None)
    model = Model(bundle, args.context, spk_emb)
    rng = None if args.greedy else np.random.default_rng(args.seed)

    wav, mimi = None, None
    if args.out is not None:
        if bundle.mimi is None:
            raise SystemExit("this bundle has no Mimi decoder; leave out --out")
        mimi = MimiStream(bundle.mimi, bundle.mimi_dims)
        wav = wave.open(str(args.out), "wb")
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(bundle.mimi_dims["sample_rate"])

    batcher = FrameBatcher(mimi) if mimi is not None else None

    def on_frame(frame: list[int]) -> None:
        if batcher is not None and (pcm := batcher.push(frame)) is not None:
            wav.writeframes(pcm16(pcm))

    trace = [] if args.trace else None
    try:
        result = generate(model, prompt_ids, prompt_codes, args.max_new_tokens, rng, on_frame, trace)
        if batcher is not None and (pcm := batcher.flush()) is not None:
            wav.writeframes(pcm16(pcm))
    finally:
        if wav is not None:
            wav.close()

    reply = [t for t in result["text_ids"] if t != cfg["eos_token_id"]]
    print(bundle.tokenizer.decode(reply, skip_special_tokens=True))
    if result["reason"] != "eos":
        print(f"[stopped: {'max-new-tokens reached' if result['reason'] == 'length' else 'context full'}]",
              file=sys.stderr)
    if trace is not None:
        print(format_trace(trace[:args.trace], len(prompt_ids)))
    if args.dump_codes is not None:
        dump = {k: result[k] for k in ("prompt_ids", "text_ids", "audio_codes", "frames")}
        args.dump_codes.write_text(json.dumps(dump) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
