"""How far a quantized bundle is from its fp32 source, measured on the same inputs through the runtime's own code.

- every graph: cosine similarity and max abs error of each output vs fp32 on real-looking inputs (a chat prompt,
  a synthetic voiced sound, a smooth image, the Talker fed the Thinker's bridge, the projector fed the encoder);
- Thinker + Talker, teacher-forced: both bundles are fed fp32's greedy choices (text token + 8 codes) for N steps
  and the top-1 of the text logits and of each codebook's logits is compared at every step;
- Thinker + Talker, free-running: the real greedy loop on each bundle, its text ids and delayed code streams
  compared position by position (an agreement rate: quantized weights are not expected to give identical codes);
- Mimi: SNR of the audio the int8 decoder streams from the same codes as fp32.

Random weights say little about trained ones; the report names the weights it ran on (the manifest's `source`).
"""

from __future__ import annotations

import numpy as np
from omni_onnx.contracts import GraphSpec
from omni_onnx.dump import CodeDump
from omni_onnx.generate import GenerationOptions, ModelState, Speaker, Stepper, generate, prompt_codes
from omni_onnx.model import OmniModel
from omni_onnx.prompt import Message
from omni_onnx.speaker import log_mel

PROMPTS = ("Why is the sky blue?", "Describe a cup of coffee in one sentence.", "Count from one to five.")


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    if np.issubdtype(ref.dtype, np.integer):  # codes: how many are the same
        return {"agreement": round(float(np.mean(ref == got)), 6)}
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cos = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    return {"cosine": round(cos, 6), "max_abs": float(np.max(np.abs(a - b), initial=0.0))}


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise), 2)


def voiced_sound(seconds: float = 3.0, rate: int = 16000) -> np.ndarray:
    """A speech-like test signal: a gliding 120-220 Hz pitch with harmonics, amplitude-modulated into syllables."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(170 + 50 * np.sin(2 * np.pi * 0.7 * t)) / rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * wav + 0.003 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


def smooth_image(size: int) -> np.ndarray:
    """Normalised pixels [1, 3, size, size] of a colour gradient with soft blobs (what the preprocessor emits)."""
    y, x = np.mgrid[0:size, 0:size] / size
    chans = [np.sin(3 * x + c) * np.cos(2 * y - c) + 0.3 * np.exp(-((x - 0.5) ** 2 + (y - 0.4) ** 2) * 20)
             for c in (0.0, 1.0, 2.0)]
    return np.clip(np.stack(chans)[None], -1, 1).astype(np.float32)


def empty_past(spec: GraphSpec) -> dict[str, np.ndarray]:
    """An empty KV cache (past_seq = 0) for a prefill from scratch."""
    return {t.name: np.zeros((1, 0, *t.dims[2:]), np.float32) for t in spec.inputs if t.name.startswith("past_")}


def graph_feeds(m: OmniModel) -> dict[str, dict[str, np.ndarray]]:
    """Real-looking inputs for each graph of `m` (the fp32 model: chained inputs come from its outputs)."""
    cfg = m.config
    ids = np.asarray(m.tokenizer.chat_ids([Message("user", PROMPTS[0])]), np.int64)
    t = len(ids)
    feeds = {"thinker": {"input_ids": ids[None], "feature_embeds": np.zeros((1, t, cfg.hidden_size), np.float32),
                         "feature_mask": np.zeros((1, t), bool), **empty_past(m.thinker.spec)}}
    bridge = m.thinker.run(feeds["thinker"])["bridge"]
    codes = prompt_codes(cfg, t, Speaker(None, None))
    feeds["talker"] = {"bridge": bridge, "codes": codes[None], "spk_mask": np.zeros((1, t), bool),
                       "spk_emb": np.zeros((1, cfg.spk_emb_size), np.float32), **empty_past(m.talker.spec)}
    if m.speech is not None:
        feats = m.speech.features(voiced_sound())
        feeds["sensevoice"] = {"features": feats[None], "mask": np.ones((1, len(feats)), bool)}
        feeds["audio_projector"] = {"audio_features": m.speech.run(feats)[0][None]}
    if m.vision is not None:
        size = int(m.bundle.manifest["vision"]["image_size"])
        feeds["vision"] = {"pixel_values": smooth_image(size)}
    if m.speaker is not None:
        feeds["campplus"] = {"features": log_mel(voiced_sound())[None]}
    if m.cloner is not None:
        feeds["mimi_encoder"] = {"audio": voiced_sound(rate=m.sample_rate)[None, None]}
    return feeds


def graph_outputs(ref: OmniModel, quant: OmniModel) -> dict[str, dict[str, dict[str, float]]]:
    sessions = {"thinker": (ref.thinker, quant.thinker), "talker": (ref.talker, quant.talker)}
    if ref.speech is not None and quant.speech is not None:
        sessions["sensevoice"] = (ref.speech.session, quant.speech.session)
        sessions["audio_projector"] = (ref.audio_projector, quant.audio_projector)
    if ref.vision is not None and quant.vision is not None:
        sessions["vision"] = (ref.vision, quant.vision)
    if ref.speaker is not None and quant.speaker is not None:
        sessions["campplus"] = (ref.speaker.session, quant.speaker.session)
    if ref.cloner is not None and quant.cloner is not None:
        sessions["mimi_encoder"] = (ref.cloner.mimi_encoder, quant.cloner.mimi_encoder)
    result = {}
    for name, feeds in graph_feeds(ref).items():
        a, b = (s.run(feeds) for s in sessions[name])
        result[name] = {k: compare(a[k], b[k]) for k in a}
    return result


def teacher_forced(ref: OmniModel, quant: OmniModel, steps: int) -> dict:
    """Both bundles fed fp32's greedy text token and codes; top-1 agreement of text and of each codebook."""
    cfg = ref.config
    text_hits, code_hits, n = 0, np.zeros(cfg.num_codebooks, int), 0
    for prompt in PROMPTS:
        ids = np.asarray(ref.tokenizer.chat_ids([Message("user", prompt)]), np.int64)
        steppers = [Stepper(cfg, m.thinker, m.talker, ModelState(cfg, len(ids) + steps + 1), Speaker(None, None))
                    for m in (ref, quant)]
        codes = prompt_codes(cfg, len(ids), Speaker(None, None))
        outs = [s.run(ids, codes) for s in steppers]
        for _ in range(steps):
            (lr, ar), (lq, aq) = outs
            token, column = int(np.argmax(lr)), np.argmax(ar, axis=-1).astype(np.int64)
            text_hits += token == int(np.argmax(lq))
            code_hits += column == np.argmax(aq, axis=-1)
            n += 1
            outs = [s.run(np.array([token], np.int64), column[:, None]) for s in steppers]
    return {"prompts": list(PROMPTS), "steps": n, "text_top1": round(text_hits / n, 4),
            "codebook_top1": [round(h / n, 4) for h in code_hits.tolist()]}


def greedy_dump(m: OmniModel, steps: int) -> CodeDump:
    ids = m.tokenizer.chat_ids([Message("user", PROMPTS[0])])
    dump = CodeDump(list(ids))
    state = ModelState(m.config, len(ids) + steps + 1)
    speaker = Speaker(None, None)
    for _ in generate(Stepper(m.config, m.thinker, m.talker, state, speaker), ids, speaker,
                      GenerationOptions(max_new_tokens=steps, greedy=True), None, dump):
        pass
    return dump


def agreement(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    return 1.0 if n == 0 else round(sum(x == y for x, y in zip(a, b)) / n, 4)


def free_running(ref: OmniModel, quant: OmniModel, steps: int) -> tuple[dict, CodeDump]:
    """The real greedy loop on each bundle; position-wise agreement of the text ids and of each code stream."""
    a, b = greedy_dump(ref, steps), greedy_dump(quant, steps)
    return {"prompt": PROMPTS[0], "max_new_tokens": steps, "text_ids": agreement(a.text_ids, b.text_ids),
            "codebooks": [agreement(x, y) for x, y in zip(a.audio_codes, b.audio_codes)],
            "frames": {"fp32": len(a.frames), "quantized": len(b.frames)}}, a


def mimi_audio(ref: OmniModel, quant: OmniModel, frames: list[list[int]], min_frames: int = 25) -> dict:
    """Decode the same frames (fp32's greedy frames, padded with seeded random codes) with both decoders."""
    rng, dims = np.random.default_rng(0), ref.mimi.dims
    codes = np.asarray(frames, np.int64).reshape(-1, dims.num_codebooks)
    codes = codes[(codes != dims.codebook_size).all(axis=1)]  # 2048: no Mimi embedding (decode_frame refuses it)
    extra = rng.integers(0, 2048, (max(0, min_frames - len(codes)), codes.shape[1]))
    codes = np.concatenate([codes, extra]).astype(np.int64)
    audio = []
    for m in (ref, quant):
        state, pcm = m.mimi.initial_state(), []
        for frame in codes:
            out, state = m.mimi.decode_frame(frame, state)
            pcm.append(out)
        audio.append(np.concatenate(pcm))
    return {"frames": len(codes), "snr_db": snr_db(*audio), **compare(*audio)}


def fidelity(ref: OmniModel, quant: OmniModel, steps: int = 32) -> dict:
    report = {"outputs": graph_outputs(ref, quant), "teacher_forced": teacher_forced(ref, quant, steps)}
    report["free_running"], dump = free_running(ref, quant, steps)
    if ref.mimi is not None and quant.mimi is not None:
        report["mimi_audio"] = mimi_audio(ref, quant, dump.frames)
    return report
