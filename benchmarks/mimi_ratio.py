"""Issue 16's Mimi row: the bundle's streaming Mimi decoder against transformers' own streaming call on the same
weights, side by side in one process, and the audio SNR of the bundle's decoder against fp32.

transformers' one-frame decode is `MimiModel.decode(codes [1, 8, 1], decoder_cache=cache, use_cache=True)`,
carrying the decoder transformer's KV cache from call to call: the streaming call it offers (its convolutions keep
no state, so its audio drifts from the whole-answer decode, which ours equals). Both sides are timed past the
sliding window (both attend over a full window), one after the other in one process, on the same thread count.
Ours is timed one frame per call (an answer's first frame) and `frames_per_call` frames per call (an answer's
steady state).
Also timed: our export-time torch module (`MimiStreamStep`, the same maths as the graph in eager torch, carrying
the same state), the reference of the fidelity suite's Mimi row.

SNR: random codes streamed through the bundle's graph against `MimiModel.decode` of all frames at once in fp32
(which the fp32 graph equals within 1e-4: tests/test_mimi_decoder.py).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES_PER_CALL = 4  # steady state: audio is decoded 4 frames (320 ms) at a time once an answer has started
SNR_FRAMES = 50


def demo_mimi(dims, out_dir: Path) -> Path:
    """A demo bundle's Mimi folder, re-drawn from the seed and level `omni-export --demo` used."""
    from omni_onnx.export.cli import DEMO_RMS_DBFS
    from omni_onnx.export.mimi_decoder import load_mimi, mimi_dims
    from omni_onnx.export.random_mimi import SIZES, random_mimi_config, write_random_mimi
    from transformers import MimiModel

    for size in SIZES:
        if mimi_dims(MimiModel(random_mimi_config(size))) == dims:
            return write_random_mimi(out_dir / "mimi", size, seed=0, rms_dbfs=DEMO_RMS_DBFS)
    raise ValueError("this demo bundle's Mimi dims match no demo size; pass --mimi")


def load_reference(model, mimi_folder: Path | None, threads: int):
    """transformers' MimiModel holding the bundle's weights: `mimi_folder`, or a demo bundle's re-drawn one."""
    import torch
    from omni_onnx.errors import OmniError
    from omni_onnx.export.mimi_decoder import load_mimi

    torch.set_num_threads(threads)
    if mimi_folder is not None:
        return load_mimi(mimi_folder)
    if not model.bundle.random_weights:
        raise OmniError("the mimi suite compares the bundle with transformers on the same weights: pass --mimi, "
                        "the Mimi folder the bundle was exported from")
    with tempfile.TemporaryDirectory(prefix="omni-mimi-") as tmp:
        return load_mimi(demo_mimi(model.mimi.dims, Path(tmp)))


def _stream(decoder, codes: np.ndarray, per_call: int, state=None):
    """Decode `codes` [8, frames] in calls of `per_call` frames: (audio, state)."""
    state, audio = state or decoder.initial_state(), []
    for f in range(0, codes.shape[1], per_call):
        pcm, state = decoder.decode_frames(codes[:, f:f + per_call], state)
        audio.append(pcm)
    return np.concatenate(audio), state


def audio_snr(decoder, mimi, frames: int = SNR_FRAMES) -> float:
    """SNR in dB of the graph's streamed audio (one frame per call) against fp32 `MimiModel.decode` of all frames."""
    import torch
    from omni_onnx.quant.fidelity import snr_db

    codes = np.random.default_rng(0).integers(0, decoder.dims.codebook_size, (decoder.dims.num_codebooks, frames))
    with torch.inference_mode():
        ref = mimi.decode(torch.from_numpy(codes[None])).audio_values.numpy().reshape(-1)
    return snr_db(ref, _stream(decoder, codes, 1)[0])


def side_by_side(decoder, mimi, per_call: int = FRAMES_PER_CALL, calls: int = 40, baseline=None,
                 warmup: int = 3) -> dict:
    """Per-frame medians of our one-frame call, our `per_call`-frame call, transformers' one-frame decode and our
    torch step, after every side has decoded past the sliding window. Timed in one process but side after side
    (`warmup` untimed calls each): after a call, torch's and onnxruntime's idle threads spin for a while and slow
    whatever the other runtime runs next, so alternating call by call measured each side's neighbour. `baseline`:
    another decoder of the same weights (an older graph), timed one frame per call."""
    import torch
    from omni_onnx.export.mimi_decoder import MimiStreamStep

    dims = decoder.dims
    per_call = min(per_call, decoder.max_frames)
    warm = dims.kv_window // dims.steps_per_frame + 4
    n = warmup + calls
    codes = np.random.default_rng(1).integers(0, dims.codebook_size, (dims.num_codebooks, warm + n * (1 + per_call)))
    step = MimiStreamStep(mimi).eval()
    names = [t.name for t in decoder.session.spec.inputs]

    def timed(fn) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t0)
        return out[warmup:]

    def ours(dec, sizes: tuple[int, ...]) -> list[list[float]]:
        """`dec` past the window, then per round one call of each size in `sizes`: times per size."""
        state = _stream(dec, codes[:, :warm], 1)[1]
        times: list[list[float]] = [[] for _ in sizes]
        f = warm
        for i in range(n):
            for k, size in enumerate(sizes):
                t0 = time.perf_counter()
                _, state = dec.decode_frames(codes[:, f:f + size], state)
                times[k].append((time.perf_counter() - t0) / size)
                f += size
        return [t[warmup:] for t in times]

    with torch.inference_mode():
        ours_one, ours_many = ours(decoder, (1, per_call))
        base = ours(baseline, (1,))[0] if baseline is not None else []
        state = _stream(decoder, codes[:, :warm], 1)[1]
        feeds = decoder.feeds(codes[:, warm:warm + 1], state)
        args = [torch.from_numpy(feeds[name]) for name in names]
        module = timed(lambda i: step(*args))
        cache = None
        for f in range(warm):
            cache = mimi.decode(torch.from_numpy(codes[None, :, f:f + 1]), decoder_cache=cache,
                                use_cache=True).decoder_cache
        theirs = []
        for i in range(n):
            t0 = time.perf_counter()
            cache = mimi.decode(torch.from_numpy(codes[None, :, warm + i:warm + i + 1]), decoder_cache=cache,
                                use_cache=True).decoder_cache
            theirs.append(time.perf_counter() - t0)
        theirs = theirs[warmup:]
    one, many, ref, mod = (float(np.median(t)) * 1e3 for t in (ours_one, ours_many, theirs, module))
    out = {"frames_per_call": per_call, "calls": calls, "ours_one_frame_ms": one, "ours_per_frame_ms": many,
           "transformers_frame_ms": ref, "ratio_one_frame": one / ref, "ratio_per_frame": many / ref,
           "torch_step_ms": mod, "ratio_torch_step": many / mod, "ratio_torch_step_one_frame": one / mod}
    if baseline is not None:
        out["baseline_frame_ms"] = float(np.median(base)) * 1e3
        out["ratio_baseline"] = out["baseline_frame_ms"] / ref
    return out


def measure(model, mimi, calls: int = 40, per_call: int = FRAMES_PER_CALL, baseline=None) -> dict:
    """`side_by_side` and `audio_snr` of one bundle's decoder (and of `baseline`, as side_by_side's); refuses a
    `mimi` that is not the bundle's."""
    from omni_onnx.errors import OmniError

    if model.mimi is None:
        raise OmniError(f"{model.bundle.root} has no Mimi decoder; leave mimi out of --suite for it")
    dims = model.mimi.dims
    snr = audio_snr(model.mimi, mimi)
    if snr < 20:
        raise OmniError(f"{model.bundle.root}'s Mimi decoder and the given Mimi weights decode the same codes "
                        f"{snr:.1f} dB apart: pass --mimi, the folder the bundle was exported from")
    out = {"precision": model.bundle.manifest["graphs"]["mimi_decoder"].get("precision", "fp32"), "snr_db": snr,
           "frame_ms": dims.frame_samples / dims.sample_rate * 1e3}
    if baseline is not None:
        out["baseline_snr_db"] = audio_snr(baseline, mimi)
    return {**out, **side_by_side(model.mimi, mimi, per_call, calls, baseline)}


def mimi_rows(run: dict, fmt) -> list[str]:
    """The Mimi row, and with the latency suite's greedy loop step beside it the steady real-time factor with
    frames decoded `frames_per_call` at a time."""
    m = run["mimi"]
    n = m["frames_per_call"]
    rows = [f"| Mimi frame / transformers' one-frame decode (`MimiModel.decode` of codes [1,8,1] carrying its "
            f"decoder_cache; same weights, same threads, one process) | {fmt(m['ratio_per_frame'])}x at {n} frames "
            f"per call ({fmt(m['ours_per_frame_ms'])} ms per frame), {fmt(m['ratio_one_frame'])}x one frame per "
            f"call ({fmt(m['ours_one_frame_ms'])} ms) / {fmt(m['transformers_frame_ms'])} ms |",
            f"| Mimi audio SNR, {m['precision']} graph vs fp32 `MimiModel.decode`, {SNR_FRAMES} random-code frames, "
            f"dB | {fmt(m['snr_db'])} |",
            f"| Mimi frame / our torch streaming step (`MimiStreamStep`: the graph's maths in eager torch, same state) "
            f"| {fmt(m['ratio_torch_step'])}x at {n} frames per call, {fmt(m['ratio_torch_step_one_frame'])}x one "
            f"frame per call / {fmt(m['torch_step_ms'])} ms |"]
    lat = run.get("latency", {})
    if "loop_step" in lat:
        loop = lat["loop_step"]["median_ms"]
        rows.append(f"| steady real-time factor: (greedy loop step + Mimi per frame at {n} frames per call) / "
                    f"{fmt(m['frame_ms'])} ms of speech | {fmt((loop + m['ours_per_frame_ms']) / m['frame_ms'])} "
                    f"({fmt(loop)} + {fmt(m['ours_per_frame_ms'])} ms) |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """The Mimi row of one bundle, optionally beside an older graph of the same weights (before/after)."""
    import argparse
    import json

    from omni_onnx.contracts import mimi_decoder_spec
    from omni_onnx.mimi import MimiStreamDecoder
    from omni_onnx.model import OmniModel
    from omni_onnx.session import GraphSession, SessionOptions

    p = argparse.ArgumentParser(prog="python -m omni_onnx.bench.mimi_ratio", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--mimi", type=Path, help="the Mimi folder the bundle was exported from (default: a demo's)")
    p.add_argument("--baseline-graph", type=Path, help="an older mimi_decoder.onnx of the same weights, timed one "
                   "frame per call beside the bundle's (a version-1 graph, for instance)")
    p.add_argument("--frames-per-call", type=int, default=FRAMES_PER_CALL)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    a = p.parse_args(argv)
    opts = SessionOptions(threads=a.threads)
    model = OmniModel.load(a.bundle, opts)
    mimi = load_reference(model, a.mimi, a.threads)
    baseline = None
    if a.baseline_graph is not None:
        dims = model.mimi.dims
        baseline = MimiStreamDecoder(GraphSession(a.baseline_graph, mimi_decoder_spec(dims, 1), opts), dims)
    r = measure(model, mimi, a.calls, a.frames_per_call, baseline)
    rows = mimi_rows({"mimi": r}, lambda x: f"{x:.4g}" if isinstance(x, float) else str(x))
    if a.baseline_graph is not None:
        rows.append(f"| baseline {a.baseline_graph}, one frame per call | {r['ratio_baseline']:.4g}x "
                    f"({r['baseline_frame_ms']:.4g} ms), SNR {r['baseline_snr_db']:.4g} dB |")
    print("\n".join(rows))
    if a.out is not None:
        from omni_onnx.atomic_file import write_bytes_atomic
        write_bytes_atomic(a.out, (json.dumps(r, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
