"""Latency of one loaded bundle, onnxruntime only (no torch, no checkpoint): prefill and decode step at several
context lengths, the real loop's per-step time, Mimi per frame, the encoders, and a whole answer's time to first
text / first audio (with the first audio's stage-by-stage breakdown, from a text prompt and from a spoken question)
and real-time factor. The torch side of each figure is `fidelity.py`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

QUESTION = "Why is the sky blue?"
# upstream's eval clip of the same question (dataset/eval_omni, Apache-2.0)
SPOKEN_QUESTION = Path(__file__).resolve().parent / "data" / "audio-en-05_why_is_the_sky_blue.mp3"


def timed_ms(fn: Callable[[], object], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float], keep: bool = False) -> dict:
    """Median, p90 and min of timings in ms; `keep` also stores every sample (for the distribution plot)."""
    q = np.percentile(ms, [50, 90])
    out = {"median_ms": round(float(q[0]), 3), "p90_ms": round(float(q[1]), 3), "min_ms": round(min(ms), 3),
           "n": len(ms)}
    if keep:
        out["samples_ms"] = [round(x, 3) for x in ms]
    return out


def random_prompt(cfg, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed random text ids [length] and codes [codebooks, length]: timings need shapes, not meaning."""
    rng = np.random.default_rng(0)
    return (rng.integers(100, cfg.vocab_size, length).astype(np.int64),
            rng.integers(0, 2048, (cfg.num_codebooks, length)).astype(np.int64))


def stepper_for(model, capacity: int):
    """The runtime's own (stepper, state) for `model`, as a conversation without a voice gets them: the dynamic or
    the static stepper; a static bundle's fixed context replaces `capacity`."""
    from omni_onnx.model import Conversation

    conv = Conversation(model, context=max(16, capacity))
    return conv.stepper, conv.state


def fits(model, positions: int) -> bool:
    """Whether `positions` fit the model's context (only a static bundle has a fixed one)."""
    return model.static is None or positions <= model.static.context


def ort_steps(model, past: int, n: int) -> dict:
    """Prefill of `past` random positions and one decode step after them, through Thinker and Talker (ORT)."""
    ids, codes = random_prompt(model.config, past + 1)
    stepper, state = stepper_for(model, past + 8)

    def ort_prefill():
        state.truncate(0)
        stepper.run(ids[:past], codes[:, :past])

    def ort_step():
        state.truncate(past)
        stepper.run(ids[past:], codes[:, past:])

    res = {"ort_prefill": summary(timed_ms(ort_prefill, max(3, n // 10), 1))}
    ort_prefill()
    res["ort_step"] = summary(timed_ms(ort_step, n), keep=True)
    return res


def loop_steps(model, n: int) -> dict:
    """The greedy generation loop per step (graphs + sampling + code ring + bookkeeping) on a text prompt."""
    from omni_onnx.generate import GenerationOptions, Speaker, generate
    from omni_onnx.prompt import Message

    ids = model.tokenizer.chat_ids([Message("user", QUESTION)])
    stepper, _ = stepper_for(model, len(ids) + n + 8)
    gen = generate(stepper, ids, Speaker(None, None), GenerationOptions(max_new_tokens=n + 1, greedy=True), None)
    next(gen)  # prefill + first sample
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        if next(gen, None) is None:
            break
        times.append((time.perf_counter() - t0) * 1e3)
    return summary(times, keep=True)


def first_answer(model, prompt: str, max_new_tokens: int) -> dict:
    """One greedy text-prompt turn as `omni-run` streams it: time to the first text delta and to the first audio
    sample (prefill included), and the real-time factor (wall time of the whole answer / seconds of speech)."""
    from omni_onnx.generate import GenerationOptions
    from omni_onnx.model import AudioChunk, Conversation, TextDelta

    first_text = first_audio = None
    samples = 0
    t0 = time.perf_counter()
    for ev in Conversation(model).respond(prompt, GenerationOptions(max_new_tokens, greedy=True),
                                          decode_audio=model.mimi is not None):
        now_ms = (time.perf_counter() - t0) * 1e3
        if isinstance(ev, TextDelta) and first_text is None:
            first_text = now_ms
        elif isinstance(ev, AudioChunk):
            first_audio = now_ms if first_audio is None else first_audio
            samples += len(ev.pcm)
    wall = time.perf_counter() - t0
    return {"time_to_first_text_ms": first_text, "time_to_first_audio_ms": first_audio,
            "audio_seconds": samples / model.sample_rate,
            "real_time_factor": wall / (samples / model.sample_rate) if samples else None}


STAGES = ("encoder_ms", "prefill_ms", "delay_steps_ms", "mimi_frame_ms")


def first_audio_stages(model, audio: Path | None) -> dict | None:
    """Time to the first audio sample split into the stages `Conversation.respond` runs: the speech encoder (the
    features, SenseVoice and projector, plus the transcript respond also makes; 0 for a text prompt), the prompt's
    prefill with the first text sample, the delay steps until the first full frame (upstream's codebook delay:
    codebook i starts at step i + 1, so 8 steps), and that frame through Mimi. None if no frame came."""
    from omni_onnx.generate import GenerationOptions, Speaker, generate
    from omni_onnx.inject import prompt_features, user_content
    from omni_onnx.prompt import Message
    from omni_onnx.speech import load_audio

    cfg = model.config
    t0 = time.perf_counter()
    embeds = None
    if audio is not None:
        wav = load_audio(audio)
        embeds = model.encode_audio(wav)
        model.speech.transcribe(wav)
    t1 = time.perf_counter()
    content = user_content(None if audio is not None else QUESTION, None if embeds is None else len(embeds), 0, cfg)
    ids = model.tokenizer.chat_ids([Message("user", content)])
    speaker = Speaker(None, None)
    stepper, _ = stepper_for(model, len(ids) + 2 * cfg.num_codebooks)
    steps = generate(stepper, ids, speaker, GenerationOptions(max_new_tokens=2 * cfg.num_codebooks, greedy=True),
                     None, None, prompt_features(ids, cfg, embeds, []))
    next(steps)
    t2 = time.perf_counter()
    delay = 0
    for step in steps:
        delay += 1
        if step.frame is not None:
            break
    else:
        return None
    t3 = time.perf_counter()
    model.mimi.decode_frame(step.frame, model.mimi.initial_state())
    t4 = time.perf_counter()
    ms = [(b - a) * 1e3 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))]
    return {**dict(zip(STAGES, ms)), "delay_steps": delay, "prompt_tokens": len(ids), "total_ms": (t4 - t0) * 1e3}


def first_audio_breakdown(model, audio: Path | None, repeats: int) -> dict | None:
    """`first_audio_stages` `repeats` times (after one warm-up); the run with the median total, so its stages
    still add up to it."""
    first_audio_stages(model, audio)
    runs = [first_audio_stages(model, audio) for _ in range(repeats)]
    if any(r is None for r in runs):
        return None
    return sorted(runs, key=lambda r: r["total_ms"])[len(runs) // 2] | {"repeats": repeats}


def bench_bundle(model, contexts: tuple[int, ...], n: int, max_new_tokens: int, progress=None) -> dict:
    """Every latency figure of a loaded bundle; `progress()` after each context length and after the rest."""
    res: dict = {"steps": {}}
    for past in contexts:
        if fits(model, past + 1):  # a static bundle's context may be shorter than the longest
            res["steps"][str(past)] = ort_steps(model, past, n)
        if progress is not None:
            progress()
    res["loop_step"] = loop_steps(model, n)
    rng = np.random.default_rng(0)
    if model.mimi is not None:
        frames = rng.integers(0, 2048, (n + 8, model.config.num_codebooks)).astype(np.int64)
        it, state = iter(frames), model.mimi.initial_state()

        def frame():
            nonlocal state
            _, state = model.mimi.decode_frame(next(it), state)

        res["mimi_frame"] = summary(timed_ms(frame, n, 3))
    if model.speech is not None:
        feats = model.speech.features((0.1 * rng.standard_normal(16000 * 3)).astype(np.float32))
        res["sensevoice_3s"] = summary(timed_ms(lambda: model.speech.run(feats), max(3, n // 5), 1))
    if model.vision is not None:
        size = int(model.bundle.manifest["vision"]["image_size"])
        pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        res["vision_image"] = summary(timed_ms(lambda: model.vision.run({"pixel_values": pixels}), max(3, n // 5), 1))
    res["answer"] = first_answer(model, QUESTION, max_new_tokens)
    if model.mimi is not None:
        repeats = max(3, n // 10)
        res["first_audio"] = {"text": first_audio_breakdown(model, None, repeats)}
        if model.speech is not None:
            res["first_audio"]["speech"] = first_audio_breakdown(model, SPOKEN_QUESTION, repeats)
    if progress is not None:
        progress()
    return res
