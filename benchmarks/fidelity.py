"""Fidelity: a bundle against our export-time torch modules (eager, the same weights), run in the same process.

- logits: the chat prompt's prefill and N teacher-forced decode steps through Thinker + Talker on both sides (both
  fed the torch side's greedy choices): max abs error of the text and audio logits, and top-1 agreement;
- greedy identity: the runtime's greedy loop against `export.reference.reference_generate` (upstream's loop restated
  in torch, prompt built by transformers' jinja template) over N steps: text ids, the 8 code streams and the frames;
- speed: ORT and torch timed side by side on the same inputs (prefill and decode step at each context length, the
  greedy loop per step, a Mimi frame, SenseVoice on 3/6/10 s, one image), with the weight-streaming floor of a step
  and the encoders' compute floor.

Needs the `export` extra (torch, transformers) and the source folders the bundle was exported from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compute import graph_macs, matmul_gflops, streamed_weight_bytes
from .latency import QUESTION, fits, ort_steps, random_prompt, stepper_for, summary, timed_ms
from .machine import read_bandwidth_gbs


@dataclass(frozen=True)
class TorchSources:
    """What `omni-export` read: the checkpoint, and the Mimi / SenseVoice / SigLIP folders (each optional)."""
    checkpoint: Path
    mimi: Path | None = None
    sensevoice: Path | None = None
    siglip: Path | None = None


class TorchReference:
    """The torch side, loaded once per invocation and shared by every bundle: the Thinker + Talker model, Mimi's
    streaming step, SenseVoice and the vision graph (those whose folder was given), the read bandwidth and the fp32
    matmul rate (the floors)."""

    def __init__(self, src: TorchSources, threads: int, checkpoint_sha256: str):
        import torch
        from omni_onnx.export.checkpoint import load_model

        torch.set_num_threads(threads)
        self.src, self.checkpoint_sha256 = src, checkpoint_sha256
        self.model = load_model(src.checkpoint).eval()
        self.mimi = self.sensevoice = self.vision = None
        if src.mimi is not None:
            from omni_onnx.export.mimi_decoder import MimiStreamStep, load_mimi
            self.mimi = MimiStreamStep(load_mimi(src.mimi)).eval()
        if src.sensevoice is not None:
            from omni_onnx.export.sensevoice import load_sensevoice
            self.sensevoice = load_sensevoice(src.sensevoice)[0].eval()
        if src.siglip is not None:
            from omni_onnx.export.siglip import VisionGraph, load_siglip
            self.vision = VisionGraph(load_siglip(src.siglip), self.model).eval()
        self.threads, self.bandwidth_gbs = threads, read_bandwidth_gbs(threads)
        self.matmul_gflops = matmul_gflops(threads)


def same_weights(manifest: dict, checkpoint_sha256: str) -> bool:
    """Whether a bundle was exported from the checkpoint with this sha256 (omni-export records it as the source)."""
    return (manifest.get("source") or {}).get("checkpoint_sha256") == checkpoint_sha256


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


def logits_error(model, ref: TorchReference, steps: int) -> dict:
    """Prefill of the chat prompt, then `steps` decode positions, both sides fed the torch side's greedy text token
    and codes: worst abs error of the last position's text logits and audio logits, and top-1 agreement."""
    import torch
    from omni_onnx.generate import Speaker, prompt_codes
    from omni_onnx.prompt import Message

    cfg, tm = model.config, ref.model
    ids = np.asarray(model.tokenizer.chat_ids([Message("user", QUESTION)]), np.int64)
    codes = prompt_codes(cfg, len(ids), Speaker(None, None))
    stepper, _ = stepper_for(model, len(ids) + steps + 1)
    text_err, audio_err, scale, text_hits, code_hits = [], [], 0.0, 0, 0
    kv = kv_t = None
    with torch.inference_mode():
        for _ in range(steps + 1):
            logits, audio = stepper.run(ids, codes)
            t_logits, bridge, kv = tm.thinker_forward(torch.from_numpy(ids)[None], kv)
            t_audio, kv_t = tm.talker_forward(bridge, torch.from_numpy(codes)[None], kv_t)
            t_logits, t_audio = t_logits[0, -1].numpy(), t_audio[0, :, -1].numpy()
            text_err.append(max_abs(logits, t_logits))
            audio_err.append(max_abs(audio, t_audio))
            scale = max(scale, float(np.abs(t_logits).max()), float(np.abs(t_audio).max()))
            ids, codes = np.array([t_logits.argmax()], np.int64), t_audio.argmax(-1).astype(np.int64)[:, None]
            text_hits += int(np.argmax(logits)) == int(ids[0])
            code_hits += int((np.argmax(audio, -1) == codes[:, 0]).sum())
    n = steps + 1
    return {"positions": n, "text_max_abs": max(text_err), "audio_max_abs": max(audio_err),
            "prefill_text_max_abs": text_err[0], "prefill_audio_max_abs": audio_err[0], "logit_scale": scale,
            "text_top1": text_hits / n, "codebook_top1": code_hits / (n * cfg.num_codebooks)}


def first_difference(a: list, b: list) -> int | None:
    """Index of the first position where the sequences differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def greedy_identity(model, ref: TorchReference, steps: int) -> dict:
    """The runtime's greedy loop vs `reference_generate` on the same question, each with its own prompt builder;
    also each loop's wall time per step (prefill included)."""
    from omni_onnx.dump import CodeDump
    from omni_onnx.export.reference import chat_prompt_ids, reference_generate
    from omni_onnx.generate import GenerationOptions, Speaker, generate
    from omni_onnx.prompt import Message

    speaker = Speaker(None, None)
    prompt = model.tokenizer.chat_ids([Message("user", QUESTION)])
    got = CodeDump(list(prompt))
    t0 = time.perf_counter()
    stepper, _ = stepper_for(model, len(prompt) + steps + 1)
    for _ in generate(stepper, prompt, speaker, GenerationOptions(max_new_tokens=steps, greedy=True), None, got):
        pass
    t1 = time.perf_counter()
    want = reference_generate(ref.model, chat_prompt_ids([{"role": "user", "content": QUESTION}]), steps)
    t2 = time.perf_counter()
    code_diffs = [d for d in map(first_difference, got.audio_codes, want.audio_codes) if d is not None]
    ort_ms, torch_ms = (t1 - t0) * 1e3 / len(got.audio_codes[0]), (t2 - t1) * 1e3 / len(want.audio_codes[0])
    return {"max_new_tokens": steps, "steps_run": len(want.audio_codes[0]),
            "text_tokens": len(want.text_ids), "frames": len(want.frames),
            "prompt_identical": got.prompt_ids == want.prompt_ids, "text_identical": got.text_ids == want.text_ids,
            "codes_identical": got.audio_codes == want.audio_codes, "frames_identical": got.frames == want.frames,
            "first_text_difference": first_difference(got.text_ids, want.text_ids),
            "first_code_difference": min(code_diffs, default=None),
            "ort_loop_ms_per_step": ort_ms, "torch_loop_ms_per_step": torch_ms, "loop_ort_over_torch": ort_ms / torch_ms}


def torch_steps(ref: TorchReference, cfg, past: int, n: int) -> dict:
    """`latency.ort_steps` on the torch side: the same random positions, the KV cache grown the upstream way."""
    import torch

    ids, codes = random_prompt(cfg, past + 1)
    t_ids, t_codes, tm = torch.from_numpy(ids)[None], torch.from_numpy(codes)[None], ref.model
    with torch.inference_mode():
        def prefill():
            _, bridge, kv = tm.thinker_forward(t_ids[:, :past])
            return kv, tm.talker_forward(bridge, t_codes[:, :, :past])[1]

        res = {"torch_prefill": summary(timed_ms(prefill, max(3, n // 10), 1))}
        kv, kv_t = prefill()

        def step():
            _, bridge, _ = tm.thinker_forward(t_ids[:, past:], kv)
            tm.talker_forward(bridge, t_codes[:, :, past:], kv_t)

        res["torch_step"] = summary(timed_ms(step, n))
    return res


def side_by_side(ort_fn, torch_fn, n: int, warmup: int = 3) -> dict:
    """Both callables timed on the same inputs, and the max abs difference of their main outputs."""
    import torch

    with torch.inference_mode():
        err = max_abs(ort_fn(), torch_fn())
        o, t = summary(timed_ms(ort_fn, n, warmup)), summary(timed_ms(torch_fn, n, warmup))
    return {"ort": o, "torch": t, "ort_over_torch": o["median_ms"] / t["median_ms"], "max_abs": err}


SPEECH_SECONDS = (3, 6, 10)


def with_compute_floor(entry: dict, session, feeds: dict, ref: TorchReference) -> dict:
    """Encoders are compute-bound: their floor is matmul FLOPs / the best matmul rate measured at load."""
    macs = graph_macs(session.path, feeds, ref.threads)
    floor_ms = 2 * macs / (ref.matmul_gflops * 1e9) * 1e3
    return {**entry, "gmacs": macs / 1e9, "compute_floor_ms": floor_ms,
            "ort_over_floor": entry["ort"]["median_ms"] / floor_ms,
            "torch_over_floor": entry["torch"]["median_ms"] / floor_ms}


def encoders(model, ref: TorchReference, n: int) -> dict:
    """A mid-stream Mimi frame, SenseVoice on 3/6/10 s and one image, each graph vs its torch module; the encoders
    also against their compute floor."""
    import torch

    rng, res = np.random.default_rng(0), {}
    if model.mimi is not None and ref.mimi is not None:
        state = model.mimi.initial_state()
        frames = rng.integers(0, 2048, (5, model.config.num_codebooks)).astype(np.int64)
        for f in frames[:4]:  # a few frames in, so the conv and KV states are not empty
            _, state = model.mimi.decode_frame(f, state)
        feeds, spec = model.mimi.feeds(frames[4], state), model.mimi.session.spec
        args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
        res["mimi_frame"] = side_by_side(lambda: model.mimi.session.run(feeds)["audio"],
                                         lambda: ref.mimi(*args)[0].numpy(), n)
    few = max(3, n // 5)
    if model.speech is not None and ref.sensevoice is not None:
        for seconds in SPEECH_SECONDS:
            feats = model.speech.features((0.1 * rng.standard_normal(16000 * seconds)).astype(np.float32))
            x, mask = torch.from_numpy(feats)[None], torch.ones((1, len(feats)), dtype=torch.bool)
            feeds = {"features": feats[None], "mask": mask.numpy()}
            res[f"sensevoice_{seconds}s"] = with_compute_floor(
                side_by_side(lambda: model.speech.run(feats)[0], lambda: ref.sensevoice(x, mask)[0][0].numpy(), few, 1),
                model.speech.session, feeds, ref)
    if model.vision is not None and ref.vision is not None:
        size = int(model.bundle.manifest["vision"]["image_size"])
        pixels = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        px = torch.from_numpy(pixels)
        res["vision_image"] = with_compute_floor(
            side_by_side(lambda: model.vision.run({"pixel_values": pixels})["image_embeds"],
                         lambda: ref.vision(px)[0].numpy(), few, 1),
            model.vision, {"pixel_values": pixels}, ref)
    return res


def speed(model, ref: TorchReference, contexts: tuple[int, ...], n: int, progress=None) -> dict:
    """Prefill and step at each context length, ORT then torch on the same positions; the weight-streaming floor
    (weight bytes one step reads / the DRAM read bandwidth measured at load) beside the shortest context's step."""
    res: dict = {"steps": {}}
    for past in contexts:
        if fits(model, past + 1):  # a static bundle's context may be shorter than the longest
            s = {**ort_steps(model, past, n), **torch_steps(ref, model.config, past, n)}
            s["prefill_ort_over_torch"] = s["ort_prefill"]["median_ms"] / s["torch_prefill"]["median_ms"]
            s["step_ort_over_torch"] = s["ort_step"]["median_ms"] / s["torch_step"]["median_ms"]
            res["steps"][str(past)] = s
        if progress is not None:
            progress()
    weight_bytes = streamed_weight_bytes([model.bundle.graph_path("thinker"), model.bundle.graph_path("talker")])
    floor_ms = weight_bytes / (ref.bandwidth_gbs * 1e9) * 1e3
    shortest = next(iter(res["steps"]))
    first = res["steps"][shortest]
    res["floor"] = {"weight_mb": weight_bytes / 1e6, "bandwidth_gbs": ref.bandwidth_gbs, "floor_ms": floor_ms,
                    "context": int(shortest), "ort_step_over_floor": first["ort_step"]["median_ms"] / floor_ms,
                    "torch_step_over_floor": first["torch_step"]["median_ms"] / floor_ms}
    res["matmul_gflops"] = ref.matmul_gflops
    res.update(encoders(model, ref, n))
    return res


def fidelity(model, ref: TorchReference, contexts: tuple[int, ...], n: int, greedy_steps: int,
             progress=None) -> dict:
    """Every fidelity figure of one loaded bundle against the torch reference."""
    out = {"reference": {"checkpoint": str(ref.src.checkpoint), "checkpoint_sha256": ref.checkpoint_sha256,
                         "same_weights": same_weights(model.bundle.manifest, ref.checkpoint_sha256),
                         **{k: None if v is None else str(v) for k, v in
                            (("mimi", ref.src.mimi), ("sensevoice", ref.src.sensevoice), ("siglip", ref.src.siglip))}},
           "logits": logits_error(model, ref, greedy_steps), "greedy": greedy_identity(model, ref, greedy_steps)}
    if progress is not None:
        progress()
    out["speed"] = speed(model, ref, contexts, n, progress)
    return out
