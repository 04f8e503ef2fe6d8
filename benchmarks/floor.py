"""The decode step against its weight-streaming floor, and a MoE bundle's step against a dense one's.

A decode step reads every weight it uses once, so its floor is those bytes / the DRAM read bandwidth measured now
(compute.streamed_weight_bytes, machine.read_bandwidth_gbs); the step is `latency.ort_steps`' at the given context.
The fidelity suite gives the same ratio beside the torch reference; this one needs no checkpoint, so every bundle
(int8, int4, MoE) gets it. Needs torch (the bandwidth probe) and onnx (the weight count): the export extra.
"""

from __future__ import annotations

import numpy as np

CONTEXT = 64  # positions cached before the step (the figure)
ROUNDS = 5


def step_floor(model, n: int, threads: int, context: int = CONTEXT, rounds: int = ROUNDS) -> dict:
    """Thinker+Talker step at `context` against its floor, in `rounds` pairs: a batch of steps, then the read
    bandwidth right after it. A shared host's DRAM bandwidth moves within seconds (24-53 GB/s on one afternoon here,
    one bundle's probe reading 51 GB/s and the next one's 34), so each batch is set against the bandwidth of its own
    moment; step, bandwidth and ratio are medians over the pairs."""
    from .compute import streamed_weight_bytes
    from .latency import ort_steps, summary
    from .machine import read_bandwidth_gbs

    weight_bytes = streamed_weight_bytes([model.bundle.graph_path("thinker"), model.bundle.graph_path("talker")])
    samples, pairs = [], []
    for _ in range(rounds):
        step = ort_steps(model, context, max(3, n // rounds))["ort_step"]
        bandwidth = read_bandwidth_gbs(threads, repeats=3)
        samples += step["samples_ms"]
        pairs.append({"step_ms": step["median_ms"], "bandwidth_gbs": bandwidth,
                      "step_over_floor": step["median_ms"] / (weight_bytes / (bandwidth * 1e9) * 1e3)})
    steps = summary(samples)
    bandwidth = float(np.median([p["bandwidth_gbs"] for p in pairs]))
    frame_ms = None if model.mimi is None else model.mimi.dims.frame_samples / model.mimi.dims.sample_rate * 1e3
    return {"context": context, "step_ms": steps["median_ms"], "step_p90_ms": steps["p90_ms"],
            "weight_mb": weight_bytes / 1e6, "bandwidth_gbs": bandwidth,
            "floor_ms": weight_bytes / (bandwidth * 1e9) * 1e3,
            "step_over_floor": float(np.median([p["step_over_floor"] for p in pairs])), "pairs": pairs,
            "moe": bool(model.config.use_moe), "frame_ms": frame_ms}


def moe_over_dense(runs: list[dict]) -> list[dict]:
    """Each MoE bundle's step over that of the first dense bundle of the same precision and recipe measured in the
    same run."""
    out = []
    for moe in (r for r in runs if r.get("floor", {}).get("moe")):
        precision = moe["bundle"]["precision"]
        dense = next((r for r in runs if "floor" in r and not r["floor"]["moe"]
                      and r["bundle"]["precision"] == precision
                      and r["bundle"].get("recipe") == moe["bundle"].get("recipe")), None)
        if dense is not None:
            out.append({"precision": precision, "moe": moe["bundle"]["path"], "dense": dense["bundle"]["path"],
                        "moe_step_ms": moe["floor"]["step_ms"], "dense_step_ms": dense["floor"]["step_ms"],
                        "ratio": moe["floor"]["step_ms"] / dense["floor"]["step_ms"]})
    return out


def floor_rows(run: dict, fmt) -> list[str]:
    """The floor row of one bundle's results and, with the latency suite's greedy loop step and Mimi frame beside
    it, the steady real-time factor: the compute one frame of speech costs over the frame's duration (an answer's
    own factor also counts the text steps after its audio ends, which random weights make arbitrary)."""
    f = run["floor"]
    ratios = [p["step_over_floor"] for p in f["pairs"]]
    rows = [f"| Thinker+Talker step / weight-streaming floor, context {f['context']} (median of {len(ratios)} "
            f"pairs: a batch of steps, the read bandwidth right after it) | {fmt(f['step_over_floor'])}x (pairs "
            f"{fmt(min(ratios))}-{fmt(max(ratios))}x; medians: step {fmt(f['step_ms'])} ms, floor "
            f"{fmt(f['floor_ms'])} ms = {fmt(f['weight_mb'])} MB at {fmt(f['bandwidth_gbs'])} GB/s) |"]
    lat = run.get("latency", {})
    if f["frame_ms"] and "mimi_frame" in lat:
        loop, frame = lat["loop_step"]["median_ms"], lat["mimi_frame"]["median_ms"]
        rows.append(f"| steady real-time factor: (greedy loop step + Mimi frame) / {fmt(f['frame_ms'])} ms of speech | "
                    f"{fmt((loop + frame) / f['frame_ms'])} ({fmt(loop)} + {fmt(frame)} ms) |")
    return rows


def moe_rows(pairs: list[dict], fmt) -> list[str]:
    if not pairs:
        return []
    lines = ["## MoE against dense", "", "| what | value |", "|---|---|"]
    lines += [f"| MoE {p['precision']} step / dense {p['precision']} step | {fmt(p['ratio'])}x "
              f"({fmt(p['moe_step_ms'])} / {fmt(p['dense_step_ms'])} ms) |" for p in pairs]
    return lines + [""]
