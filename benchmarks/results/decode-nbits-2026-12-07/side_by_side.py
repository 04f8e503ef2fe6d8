"""Issue 16, before/after side by side: two bundles of the same weights (here the dynamic int8 recipe and the 8-bit
MatMulNBits one; or a dense and a MoE bundle) loaded in one process, their calls interleaved call by call, so both
see the same moment of a shared host.

    python side_by_side.py BEFORE AFTER [--rounds 8] [--out side_by_side.json]

Per round: for each context, one decode step of each bundle in turn (40 of each), the DRAM read bandwidth after the
context-64 batch, then 3 prefills of each at 64 and 256 positions, alternating. Each round's medians give each
bundle's step / floor (its Thinker and Talker weight bytes / that round's bandwidth) and the after / before ratios;
the summary holds their medians over the rounds, with ranges.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from omni_onnx.bench.compute import streamed_weight_bytes
from omni_onnx.bench.machine import describe, read_bandwidth_gbs
from omni_onnx.model import Conversation, OmniModel
from omni_onnx.session import SessionOptions

CONTEXTS, PREFILLS, SIDES = (64, 256, 1024), (64, 256), ("before", "after")


def timed_round(convs: dict, ids: np.ndarray, codes: np.ndarray, steps: int) -> dict:
    row: dict = {"decode": {}, "prefill": {}}
    for past in CONTEXTS:
        for conv in convs.values():
            conv.state.truncate(0)
            conv.stepper.run(ids[:past], codes[:, :past])
        times: dict[str, list[float]] = {k: [] for k in convs}
        for rep in range(steps + 3):  # the first 3 of each warm up
            for k, conv in convs.items():
                conv.state.truncate(past)
                t0 = time.perf_counter()
                conv.stepper.run(ids[past:past + 1], codes[:, past:past + 1])
                if rep >= 3:
                    times[k].append((time.perf_counter() - t0) * 1e3)
        row["decode"][str(past)] = {k: float(np.median(v)) for k, v in times.items()}
        if past == 64:
            row["bandwidth_gbs"] = read_bandwidth_gbs(2, repeats=3)
    for n in PREFILLS:
        times = {k: [] for k in convs}
        for rep in range(4):
            for k, conv in convs.items():
                conv.state.truncate(0)
                t0 = time.perf_counter()
                conv.stepper.run(ids[:n], codes[:, :n])
                if rep:
                    times[k].append((time.perf_counter() - t0) * 1e3)
        row["prefill"][str(n)] = {k: float(np.median(v)) for k, v in times.items()}
    return row


def spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    models = {k: OmniModel.load(b, SessionOptions(threads=2)) for k, b in zip(SIDES, (a.before, a.after))}
    weights = {k: streamed_weight_bytes([m.bundle.graph_path("thinker"), m.bundle.graph_path("talker")])
               for k, m in models.items()}
    cfg = models["before"].config
    rng = np.random.default_rng(0)
    ids = rng.integers(100, cfg.vocab_size, max(CONTEXTS) + 1).astype(np.int64)
    codes = rng.integers(0, 2048, (cfg.num_codebooks, max(CONTEXTS) + 1)).astype(np.int64)
    convs = {k: Conversation(m, context=max(CONTEXTS) + 8) for k, m in models.items()}
    rounds = []
    for r in range(a.rounds):
        row = timed_round(convs, ids, codes, a.steps)
        row["step_over_floor"] = {k: row["decode"]["64"][k] / (weights[k] / (row["bandwidth_gbs"] * 1e9) * 1e3)
                                  for k in SIDES}
        rounds.append(row)
        print(f"round {r}: {json.dumps(row['decode']['64'])} at {row['bandwidth_gbs']:.1f} GB/s", flush=True)
    summary = {
        "weight_mb": {k: v / 1e6 for k, v in weights.items()},
        "bandwidth_gbs": spread([x["bandwidth_gbs"] for x in rounds]),
        "step_over_floor": {k: spread([x["step_over_floor"][k] for x in rounds]) for k in SIDES},
        "decode_ms": {str(c): {k: spread([x["decode"][str(c)][k] for x in rounds]) for k in SIDES} for c in CONTEXTS},
        "decode_after_over_before": {str(c): spread([x["decode"][str(c)]["after"] / x["decode"][str(c)]["before"]
                                                     for x in rounds]) for c in CONTEXTS},
        "prefill_ms": {str(n): {k: spread([x["prefill"][str(n)][k] for x in rounds]) for k in SIDES} for n in PREFILLS},
        "prefill_after_over_before": {str(n): spread([x["prefill"][str(n)]["after"] / x["prefill"][str(n)]["before"]
                                                      for x in rounds]) for n in PREFILLS}}
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.write_text(json.dumps({"machine": describe(2), "before": str(a.before), "after": str(a.after),
                                     "summary": summary, "rounds": rounds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
