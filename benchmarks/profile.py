"""Where a decode step's time goes: onnxruntime's profile of the Thinker and Talker step, summed per operator type.

    python -m omni_onnx.bench.profile --bundle B [--context 64] [--steps 50] [--out profile.json]

The step's weight-streaming floor says how fast it could be; this says what the rest is: kernel time per operator
type per step (the int8 MatMuls, the ops that quantize their inputs, attention's small ops), how many nodes run,
and the gap between the nodes' kernel time and the whole run (onnxruntime's per-node scheduling and allocation).
Each graph's session is reopened with profiling on; the step is `latency.ort_steps`' (prefill of `context` random
positions, then the same decode position again and again), so the figures line up with omni-bench's step rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from .latency import random_prompt, stepper_for

GRAPHS = ("thinker", "talker")
WARMUP = 3


def profiling_session(path: Path, threads: int, prefix: Path):
    """The session GraphSession opens, with onnxruntime's profiler writing under `prefix`."""
    import onnxruntime as ort
    from omni_onnx.session import DISABLED_OPTIMIZERS, SessionOptions, ort_session_options

    so = ort_session_options(SessionOptions(threads=threads))
    so.enable_profiling, so.profile_file_prefix = True, os.fspath(prefix)
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def per_op_type(events: list[dict], runs: int) -> dict:
    """The last `runs` runs of one session's profile: per operator type, kernel ms and nodes per run; the runs'
    own median ms and the part of it no kernel accounts for."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session"
                   and e.get("name") == "model_run")[-runs:]
    start = spans[0][0]
    ms, nodes = defaultdict(float), defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        op = e.get("args", {}).get("op_name", "?")
        ms[op] += e["dur"] / 1e3 / runs
        nodes[op] += 1
    run_ms = sorted((b - a) / 1e3 for a, b in spans)[len(spans) // 2]
    kernels = sum(ms.values())
    ops = {op: {"ms": round(ms[op], 4), "nodes": nodes[op] // runs}
           for op in sorted(ms, key=ms.get, reverse=True)}
    return {"run_ms": round(run_ms, 4), "kernel_ms": round(kernels, 4), "outside_kernels_ms": round(run_ms - kernels, 4),
            "nodes": sum(v["nodes"] for v in ops.values()), "ops": ops}


def profile_step(bundle: Path, context: int, steps: int, threads: int) -> dict:
    """Profile `steps` decode steps at `context` cached positions (after `WARMUP` unprofiled-in-the-figures ones)."""
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    model = OmniModel.load(bundle, SessionOptions(threads=threads))
    if model.static is not None:
        raise ValueError(f"{bundle} is a static bundle; the profile covers the dynamic Thinker and Talker graphs")
    with tempfile.TemporaryDirectory(prefix="omni-profile-") as tmp:
        for name in GRAPHS:
            getattr(model, name).sess = profiling_session(model.bundle.graph_path(name), threads, Path(tmp) / name)
        ids, codes = random_prompt(model.config, context + 1)
        stepper, state = stepper_for(model, context + 8)
        stepper.run(ids[:context], codes[:, :context])
        for _ in range(WARMUP + steps):
            state.truncate(context)
            stepper.run(ids[context:], codes[:, context:])
        out = {}
        for name in GRAPHS:
            events = json.loads(Path(getattr(model, name).sess.end_profiling()).read_text(encoding="utf-8"))
            out[name] = per_op_type(events, steps)
    return {"bundle": str(bundle), "precision": model.bundle.manifest["graphs"]["thinker"].get("precision", "fp32"),
            "context": context, "steps": steps, "threads": threads, "graphs": out}


def markdown(res: dict) -> str:
    lines = [f"{res['bundle']} ({res['precision']}), decode step at context {res['context']}, "
             f"{res['steps']} steps, {res['threads']} threads (profiler on)", ""]
    for name, g in res["graphs"].items():
        lines += [f"{name}: run {g['run_ms']:.3f} ms = kernels {g['kernel_ms']:.3f} ms in {g['nodes']} nodes + "
                  f"{g['outside_kernels_ms']:.3f} ms outside them", "", "| op type | ms / step | nodes | share |",
                  "|---|---|---|---|"]
        lines += [f"| {op} | {v['ms']:.3f} | {v['nodes']} | {v['ms'] / g['run_ms']:.1%} |" for op, v in g["ops"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_onnx.bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--context", type=int, default=64, help="cached positions before the step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="profiled steps (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    a = p.parse_args(argv)
    if a.context < 1 or a.steps < 1:
        print("profile: error: --context and --steps must be at least 1", file=sys.stderr)
        return 1
    if not (a.bundle / "manifest.json").is_file():
        print(f"profile: error: {a.bundle} is not a bundle (no manifest.json); pass --bundle DIR", file=sys.stderr)
        return 1
    try:
        res = profile_step(a.bundle, a.context, a.steps, a.threads)
    except ValueError as e:
        print(f"profile: error: {e}", file=sys.stderr)
        return 1
    print(markdown(res))
    if a.out is not None:
        from omni_onnx.atomic_file import write_bytes_atomic
        write_bytes_atomic(a.out, (json.dumps(res, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
