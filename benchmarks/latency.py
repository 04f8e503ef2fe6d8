"""Foundation latency benchmark: ORT vs our torch modules (eager, same weights) in one run, plus the weight-streaming
floor of a decode step (weight bytes one Thinker+Talker step reads / DRAM read bandwidth measured now).

    python -m omni_onnx.bench --bundle B --checkpoint sft_omni_768.pth --mimi MIMI_DIR --out benchmarks/results
    python -m omni_onnx.bench --demo full --out benchmarks/results     # random full-size weights, built here
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .machine import describe, read_bandwidth_gbs


def timed_ms(fn: Callable[[], object], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    q = np.percentile(ms, [50, 90])
    return {"median_ms": round(float(q[0]), 3), "p90_ms": round(float(q[1]), 3), "min_ms": round(min(ms), 3),
            "n": len(ms)}


def step_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every matmul weight (the tied embedding once, as the LM head);
    the Talker's code-embedding tables are gathered row by row, so they are left out."""
    total = 0
    for name, p in model.named_parameters():  # tied parameters are yielded once
        if name.startswith(("talker.embed_tokens.", "audio_proj.", "vision_proj.")):
            continue
        total += p.numel() * p.element_size()
    return total


def random_prompt(cfg, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed random text ids [length] and codes [codebooks, length]: timings need shapes, not meaning."""
    rng = np.random.default_rng(0)
    return (rng.integers(100, cfg.vocab_size, length).astype(np.int64),
            rng.integers(0, 2048, (cfg.num_codebooks, length)).astype(np.int64))


def ort_steps(model, past: int, n: int) -> dict:
    """Prefill of `past` random positions and one decode step after them, through Thinker and Talker (ORT)."""
    from omni_onnx.generate import ModelState, Speaker, Stepper

    cfg = model.config
    ids, codes = random_prompt(cfg, past + 1)
    state = ModelState(cfg, past + 8)
    stepper = Stepper(cfg, model.thinker, model.talker, state, Speaker(None, None))

    def ort_prefill():
        state.truncate(0)
        stepper.run(ids[:past], codes[:, :past])

    def ort_step():
        state.truncate(past)
        stepper.run(ids[past:], codes[:, past:])

    res = {"ort_prefill": summary(timed_ms(ort_prefill, max(3, n // 10), 1))}
    ort_prefill()
    res["ort_step"] = summary(timed_ms(ort_step, n))
    return res


def bench_steps(model_dir: Path, checkpoint: Path, threads: int, past: int, n: int) -> dict:
    import torch

    from omni_onnx.export.checkpoint import load_model
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    ort_model = OmniModel.load(model_dir, SessionOptions(threads=threads))
    ids, codes = random_prompt(ort_model.config, past + 1)
    res: dict = {"past": past, **ort_steps(ort_model, past, n)}

    torch.set_num_threads(threads)
    tmodel = load_model(checkpoint)
    res["weight_bytes_per_step"] = step_weight_bytes(tmodel)
    t_ids, t_codes = torch.from_numpy(ids)[None], torch.from_numpy(codes)[None]
    with torch.inference_mode():
        def torch_prefill():
            _, bridge, kv = tmodel.thinker_forward(t_ids[:, :past])
            _, kv_t = tmodel.talker_forward(bridge, t_codes[:, :, :past])
            return kv, kv_t

        res["torch_prefill"] = summary(timed_ms(torch_prefill, max(3, n // 10), 1))
        kv, kv_t = torch_prefill()

        def torch_step():
            _, bridge, _ = tmodel.thinker_forward(t_ids[:, past:], kv)
            tmodel.talker_forward(bridge, t_codes[:, :, past:], kv_t)

        res["torch_step"] = summary(timed_ms(torch_step, n))
    return res


def bench_loop(model_dir: Path, threads: int, n: int) -> dict:
    """Whole generation loop per step (graphs + sampling + bookkeeping), greedy, text prompt."""
    from omni_onnx.generate import GenerationOptions, ModelState, Speaker, Stepper, generate
    from omni_onnx.model import OmniModel
    from omni_onnx.prompt import Message
    from omni_onnx.session import SessionOptions

    m = OmniModel.load(model_dir, SessionOptions(threads=threads))
    ids = m.tokenizer.chat_ids([Message("user", "Why is the sky blue?")])
    state = ModelState(m.config, len(ids) + n + 8)
    gen = generate(Stepper(m.config, m.thinker, m.talker, state, Speaker(None, None)), ids, Speaker(None, None),
                   GenerationOptions(max_new_tokens=n + 1, greedy=True), None)
    next(gen)  # prefill + first sample
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        if next(gen, None) is None:
            break
        times.append((time.perf_counter() - t0) * 1e3)
    return summary(times)


def bench_mimi(model_dir: Path, mimi_dir: Path, threads: int, n: int) -> dict:
    import torch

    from omni_onnx.export.mimi_decoder import load_mimi
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    m = OmniModel.load(model_dir, SessionOptions(threads=threads))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 2048, (n + 8, 8)).astype(np.int64)
    state = m.mimi.initial_state()
    it = iter(frames)

    def ort_frame():
        nonlocal state
        _, state = m.mimi.decode_frame(next(it), state)

    res = {"ort_frame": summary(timed_ms(ort_frame, n, 3))}
    torch.set_num_threads(threads)
    mimi = load_mimi(mimi_dir)
    one = torch.from_numpy(frames[:1].T[None].copy())
    with torch.inference_mode():
        res["transformers_decode_one_frame"] = summary(timed_ms(lambda: mimi.decode(one), n, 3))
    return res


def bench_encoders(model_dir: Path, checkpoint: Path, sensevoice_dir: Path | None, siglip_dir: Path | None,
                   threads: int, n: int) -> dict:
    """Speech encoder on 3/6/10 s and the vision graph per image, ORT vs torch eager on the same weights."""
    import torch

    from omni_onnx.export.checkpoint import load_model
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    m = OmniModel.load(model_dir, SessionOptions(threads=threads))
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    res: dict = {}
    if sensevoice_dir is not None:
        from omni_onnx.export.sensevoice import load_sensevoice
        encoder, _ = load_sensevoice(sensevoice_dir)
        for seconds in (3, 6, 10):
            wav = (0.1 * rng.standard_normal(16000 * seconds)).astype(np.float32)
            feats = m.speech.features(wav)
            x = torch.from_numpy(feats)[None]
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
            with torch.inference_mode():
                res[f"sensevoice_{seconds}s"] = {
                    "ort": summary(timed_ms(lambda: m.speech.run(feats), max(3, n // 5), 1)),
                    "torch": summary(timed_ms(lambda: encoder(x, mask), max(3, n // 5), 1))}
    if siglip_dir is not None:
        from omni_onnx.export.siglip import load_siglip
        tower, tmodel = load_siglip(siglip_dir), load_model(checkpoint)
        pixels = rng.standard_normal((1, 3, 256, 256)).astype(np.float32)
        px = torch.from_numpy(pixels)
        with torch.inference_mode():
            res["vision"] = {
                "ort": summary(timed_ms(lambda: m.vision.run({"pixel_values": pixels}), max(3, n // 5), 1)),
                "torch": summary(timed_ms(lambda: tmodel.vision_project(tower(pixel_values=px).last_hidden_state),
                                          max(3, n // 5), 1))}
    return res


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


def bench_bundle(model, contexts: tuple[int, ...], n: int, max_new_tokens: int, progress=None) -> dict:
    """ORT-only latency of a loaded bundle (no torch, no checkpoint): prefill and decode step at each context
    length, Mimi ms per frame, encoder ms, and a whole answer's first-text / first-audio times and RTF."""
    res: dict = {"steps": {}}
    for past in contexts:
        res["steps"][str(past)] = ort_steps(model, past, n)
        if progress is not None:
            progress()
    if model.mimi is not None:
        frames = np.random.default_rng(0).integers(0, 2048, (n + 8, model.config.num_codebooks)).astype(np.int64)
        it, state = iter(frames), model.mimi.initial_state()

        def frame():
            nonlocal state
            _, state = model.mimi.decode_frame(next(it), state)

        res["mimi_frame"] = summary(timed_ms(frame, n, 3))
    rng = np.random.default_rng(0)
    if model.speech is not None:
        feats = model.speech.features((0.1 * rng.standard_normal(16000 * 3)).astype(np.float32))
        res["sensevoice_3s"] = summary(timed_ms(lambda: model.speech.run(feats), max(3, n // 5), 1))
    if model.vision is not None:
        size = int(model.bundle.manifest["vision"]["image_size"])
        pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        res["vision_image"] = summary(timed_ms(lambda: model.vision.run({"pixel_values": pixels}), max(3, n // 5), 1))
    res["answer"] = first_answer(model, "Why is the sky blue?", max_new_tokens)
    if progress is not None:
        progress()
    return res


def table(r: dict) -> str:
    s, m = r["steps"], r.get("mimi")
    floor = r["floor_ms"]
    rows = [
        ("Thinker+Talker step (ORT fp32)", s["ort_step"]["median_ms"], f"{s['ort_step']['median_ms'] / floor:.2f}x floor"),
        ("Thinker+Talker step (torch eager)", s["torch_step"]["median_ms"], f"{s['torch_step']['median_ms'] / floor:.2f}x floor"),
        ("  ORT / torch", None, f"{s['ort_step']['median_ms'] / s['torch_step']['median_ms']:.2f}"),
        ("whole loop per step (ORT, greedy)", r["loop"]["median_ms"], f"{r['loop']['median_ms'] / floor:.2f}x floor"),
        (f"prefill {s['past']} positions (ORT)", s["ort_prefill"]["median_ms"], ""),
        (f"prefill {s['past']} positions (torch eager)", s["torch_prefill"]["median_ms"],
         f"ORT/torch {s['ort_prefill']['median_ms'] / s['torch_prefill']['median_ms']:.2f}"),
        ("weight-streaming floor", floor, f"{r['weight_mb']:.0f} MB / {r['bandwidth_gbs']:.1f} GB/s"),
    ]
    for name, e in r.get("encoders", {}).items():
        label = name.replace("sensevoice_", "SenseVoice ") if name != "vision" else "SigLIP + projector, one image"
        rows += [(f"{label} (ORT)", e["ort"]["median_ms"], f"{e['ort']['median_ms'] / e['torch']['median_ms']:.2f}x torch"),
                 (f"{label} (torch eager)", e["torch"]["median_ms"], "")]
    if m:
        rows += [("Mimi frame (ORT streaming)", m["ort_frame"]["median_ms"],
                  f"{m['ort_frame']['median_ms'] / m['transformers_decode_one_frame']['median_ms']:.2f}x transformers"),
                 ("Mimi one-frame decode (transformers)", m["transformers_decode_one_frame"]["median_ms"], "")]
    lines = [f"CPU: {r['machine']['cpu']}, {r['machine']['threads']} threads, bundle {r['bundle']}", "",
             "| what | median ms | ratio |", "|---|---|---|"]
    lines += [f"| {a} | {'' if b is None else f'{b:.2f}'} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_onnx.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="fp32 bundle (with --checkpoint: the weights it was exported from)")
    p.add_argument("--checkpoint", type=Path, help="the .pth the bundle came from (torch side of the comparison)")
    p.add_argument("--mimi", type=Path, help="the Mimi folder the bundle came from")
    p.add_argument("--sensevoice", type=Path, help="the SenseVoiceSmall folder the bundle came from")
    p.add_argument("--siglip", type=Path, help="the SigLIP folder the bundle came from")
    p.add_argument("--demo", choices=("tiny", "full"), help="build random weights of this size and a bundle first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--past", type=int, default=200, help="context length at which a step is timed")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="fp32")
    p.add_argument("--label", help="what the bundle is, for the report (default: its path)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            from omni_onnx.config import FULL, TINY
            from omni_onnx.export.cli import Sources, export_bundle
            from omni_onnx.export.random_checkpoint import write_random_pth
            from omni_onnx.export.random_mimi import write_random_mimi
            args.checkpoint = write_random_pth(Path(tmp) / "sft_omni_768.pth", FULL if args.demo == "full" else TINY)
            from omni_onnx.export.random_sensevoice import write_random_sensevoice
            from omni_onnx.export.random_siglip import write_random_siglip
            args.mimi = write_random_mimi(Path(tmp) / "mimi", size=args.demo)
            args.siglip = write_random_siglip(Path(tmp) / "siglip", size=args.demo)
            args.sensevoice = write_random_sensevoice(Path(tmp) / "sensevoice", size=args.demo)
            args.bundle = export_bundle(Sources(args.checkpoint, args.mimi, args.siglip, args.sensevoice, voices=()),
                                        Path(tmp) / "bundle", verify=False)
        if args.bundle is None or args.checkpoint is None:
            p.error("give --bundle and --checkpoint (the same weights), or --demo")
        bw = read_bandwidth_gbs(args.threads)
        label = args.label or (f"random {args.demo}-size weights" if args.demo else str(args.bundle))
        r: dict = {"machine": describe(args.threads), "bundle": label,
                   "bandwidth_gbs": round(bw, 2)}
        r["steps"] = bench_steps(args.bundle, args.checkpoint, args.threads, args.past, args.steps)
        r["weight_mb"] = r["steps"]["weight_bytes_per_step"] / 1e6
        r["floor_ms"] = round(r["steps"]["weight_bytes_per_step"] / (bw * 1e9) * 1e3, 3)
        r["loop"] = bench_loop(args.bundle, args.threads, args.steps)
        if args.mimi is not None:
            r["mimi"] = bench_mimi(args.bundle, args.mimi, args.threads, args.steps)
        if args.sensevoice is not None or args.siglip is not None:
            r["encoders"] = bench_encoders(args.bundle, args.checkpoint, args.sensevoice, args.siglip, args.threads,
                                           args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(r, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(table(r))
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
