"""The decode step against its weight-streaming floor, and a MoE bundle's step against a dense one's.

A decode step reads every weight it uses once, so its floor is those bytes / the DRAM read bandwidth measured now
(compute.streamed_weight_bytes, machine.read_bandwidth_gbs); the step is `latency.ort_steps`' at the given context.
The fidelity suite gives the same ratio beside the torch reference; this one needs no checkpoint, so every bundle
(int8, int4, MoE) gets it. Needs torch (the bandwidth probe) and onnx (the weight count): the export extra.
"""

from __future__ import annotations

CONTEXT = 64  # positions cached before the step (the figure)


def step_floor(model, n: int, threads: int, context: int = CONTEXT) -> dict:
    """Thinker+Talker step at `context` (median of `n`), its floor and their ratio."""
    from .compute import streamed_weight_bytes
    from .latency import ort_steps
    from .machine import read_bandwidth_gbs

    step = ort_steps(model, context, n)["ort_step"]
    bandwidth = read_bandwidth_gbs(threads)
    weight_bytes = streamed_weight_bytes([model.bundle.graph_path("thinker"), model.bundle.graph_path("talker")])
    floor_ms = weight_bytes / (bandwidth * 1e9) * 1e3
    frame_ms = None if model.mimi is None else model.mimi.dims.frame_samples / model.mimi.dims.sample_rate * 1e3
    return {"context": context, "step_ms": step["median_ms"], "step_p90_ms": step["p90_ms"],
            "weight_mb": weight_bytes / 1e6, "bandwidth_gbs": bandwidth, "floor_ms": floor_ms,
            "step_over_floor": step["median_ms"] / floor_ms, "moe": bool(model.config.use_moe), "frame_ms": frame_ms}


def moe_over_dense(runs: list[dict]) -> list[dict]:
    """Each MoE bundle's step over the dense bundle's of the same precision measured in the same run."""
    out = []
    for moe in (r for r in runs if r.get("floor", {}).get("moe")):
        precision = moe["bundle"]["precision"]
        dense = next((r for r in runs if "floor" in r and not r["floor"]["moe"]
                      and r["bundle"]["precision"] == precision), None)
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
    rows = [f"| Thinker+Talker step / weight-streaming floor, context {f['context']} | {fmt(f['step_over_floor'])}x "
            f"({fmt(f['step_ms'])} ms / {fmt(f['floor_ms'])} ms = {fmt(f['weight_mb'])} MB at "
            f"{fmt(f['bandwidth_gbs'])} GB/s) |"]
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
