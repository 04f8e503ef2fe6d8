"""Where a decode step's time goes: onnxruntime's profile of the Thinker and Talker step, summed per operator type.

    python -m omni_onnx.bench.profile --bundle B [--context 64] [--steps 50] [--out profile.json]
    python -m omni_onnx.bench.profile --bundle B --graph mimi_decoder [--frames-per-call 4]   # a Mimi call

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
CONTROL_FLOW = ("If", "Loop", "Scan")  # their time includes their branch's nodes, which the profile also lists
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
    kernels = sum(v for op, v in ms.items() if op not in CONTROL_FLOW)
    ops = {op: {"ms": round(ms[op], 4), "nodes": nodes[op] // runs}
           for op in sorted(ms, key=ms.get, reverse=True)}
    return {"run_ms": round(run_ms, 4), "kernel_ms": round(kernels, 4),
            "outside_kernels_ms": round(run_ms - kernels, 4),
            "nodes": sum(v["nodes"] for op, v in ops.items() if op not in CONTROL_FLOW), "ops": ops}


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
            "what": f"decode step at context {context}", "context": context, "steps": steps, "threads": threads,
            "graphs": out}


def profile_mimi(bundle: Path, frames_per_call: int, calls: int, threads: int) -> dict:
    """Profile `calls` Mimi decoder calls of `frames_per_call` frames each, past the sliding window (the same
    call again and again, as the mimi suite's steady state)."""
    import numpy as np
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    model = OmniModel.load(bundle, SessionOptions(threads=threads))
    decoder = model.mimi
    if decoder is None:
        raise ValueError(f"{bundle} has no Mimi decoder")
    if not 1 <= frames_per_call <= decoder.max_frames:
        raise ValueError(f"--frames-per-call must be 1 to {decoder.max_frames} for this bundle's decoder")
    dims = decoder.dims
    warm = dims.kv_window // dims.steps_per_frame + 4
    codes = np.random.default_rng(0).integers(0, dims.codebook_size, (dims.num_codebooks, warm + frames_per_call))
    state = decoder.initial_state()
    for f in range(warm):
        _, state = decoder.decode_frame(codes[:, f], state)
    feeds = decoder.feeds(codes[:, warm:], state)
    with tempfile.TemporaryDirectory(prefix="omni-profile-") as tmp:
        sess = profiling_session(model.bundle.graph_path("mimi_decoder"), threads, Path(tmp) / "mimi_decoder")
        for _ in range(WARMUP + calls):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text(encoding="utf-8"))
    precision = model.bundle.manifest["graphs"]["mimi_decoder"].get("precision", "fp32")
    return {"bundle": str(bundle), "precision": precision, "what": f"Mimi decoder call of {frames_per_call} frame(s)", "frames_per_call": frames_per_call,
            "steps": calls, "threads": threads, "graphs": {"mimi_decoder": per_op_type(events, calls)}}


def _one_row_matmuls(path: Path, k: int, n: int, copies: int, seed: int = 0) -> None:
    """A graph of `copies` independent [1, k] x [k, n] fp32 MatMuls on one input (a decode step's shape)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((0.02 * rng.standard_normal((k, n))).astype(np.float32), f"w{i}")
               for i in range(copies)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(copies)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]) for i in range(copies)]
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])], outputs,
                              weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), os.fspath(path))


def kernel_rates(threads: int, k: int = 768, n: int = 4864, dram_copies: int = 24, repeats: int = 30) -> dict:
    """Weight bytes per second of one-row MatMuls in fp32, the dynamic int8 pass, and the int8 and int4 recipes'
    Thinker passes, with one weight matrix (it stays in the last-level cache between runs) and with `dram_copies`
    of them (far more than the cache: streamed from DRAM). A kernel whose DRAM rate is its cache rate, and below
    the read bandwidth, is bound by its arithmetic, not by memory: no graph change brings such a step to its floor."""
    import time

    import numpy as np
    import onnx
    import onnxruntime as ort
    from omni_onnx.quant.dynamic_int8 import recipe_weights
    from omni_onnx.quant.recipes import DYNAMIC_INT8, INT4, INT8, GraphRecipe
    from omni_onnx.session import SessionOptions, ort_session_options

    from .compute import streamed_weight_bytes
    from .machine import read_bandwidth_gbs

    passes = {"dynamic int8": GraphRecipe(DYNAMIC_INT8), "int8": INT8.for_graph("thinker"),
              "int4": INT4.for_graph("thinker")}
    out: dict = {"shape": [1, k, n], "bandwidth_gbs": read_bandwidth_gbs(threads), "rates_gbs": {}}
    x = {"x": np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)}
    with tempfile.TemporaryDirectory(prefix="omni-kernels-") as tmp:
        for copies, where in ((1, "cache"), (dram_copies, "dram")):
            paths = {"fp32": Path(tmp) / f"fp32_{copies}.onnx"}
            _one_row_matmuls(paths["fp32"], k, n, copies)
            for name, r in passes.items():
                paths[name] = Path(tmp) / f"{name.replace(' ', '_')}_{copies}.onnx"
                recipe_weights(paths["fp32"], paths[name], r, Path(tmp))
            for precision, path in paths.items():
                sess = ort.InferenceSession(os.fspath(path), ort_session_options(SessionOptions(threads=threads)),
                                            providers=["CPUExecutionProvider"])
                ops = sorted({nd.op_type for nd in onnx.load(os.fspath(path)).graph.node})
                for _ in range(3):
                    sess.run(None, x)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    sess.run(None, x)
                    times.append(time.perf_counter() - t0)
                seconds = sorted(times)[len(times) // 2]
                out["rates_gbs"].setdefault(precision, {"ops": ops})[where] = \
                    streamed_weight_bytes([path]) / seconds / 1e9
    return out


def markdown(res: dict) -> str:
    lines = [f"{res['bundle']} ({res['precision']}), {res['what']}, {res['steps']} runs, {res['threads']} threads "
             f"(profiler on)", ""]
    for name, g in res["graphs"].items():
        lines += [f"{name}: run {g['run_ms']:.3f} ms = kernels {g['kernel_ms']:.3f} ms in {g['nodes']} nodes + "
                  f"{g['outside_kernels_ms']:.3f} ms outside them", "", "| op type | ms / run | nodes | share |",
                  "|---|---|---|---|"]
        lines += [f"| {op}{' (its branches included)' if op in CONTROL_FLOW else ''} | {v['ms']:.3f} | {v['nodes']} | "
                  f"{v['ms'] / g['run_ms']:.1%} |" for op, v in g["ops"].items()]
        lines.append("")
    if "kernels" in res:
        kr = res["kernels"]
        lines += [f"one-row MatMul {kr['shape']}: weight bytes read per second, GB/s (DRAM read bandwidth "
                  f"{kr['bandwidth_gbs']:.1f} GB/s)", "", "| precision | ops | weights in cache | from DRAM |",
                  "|---|---|---|---|"]
        lines += [f"| {p} | {', '.join(r['ops'])} | {r['cache']:.1f} | {r['dram']:.1f} |"
                  for p, r in kr["rates_gbs"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_onnx.bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--context", type=int, default=64, help="cached positions before the step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="profiled steps or calls (default: %(default)s)")
    p.add_argument("--graph", choices=("step", "mimi_decoder"), default="step",
                   help="the Thinker+Talker decode step, or a Mimi decoder call (default: %(default)s)")
    p.add_argument("--frames-per-call", type=int, default=1, help="mimi_decoder: frames per call (default: "
                   "%(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kernels", action="store_true", help="also the one-row MatMul kernels' weight read rates "
                   "(fp32 / int8 / int4, weights in cache and from DRAM) against the read bandwidth")
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    a = p.parse_args(argv)
    if a.context < 1 or a.steps < 1:
        print("profile: error: --context and --steps must be at least 1", file=sys.stderr)
        return 1
    if not (a.bundle / "manifest.json").is_file():
        print(f"profile: error: {a.bundle} is not a bundle (no manifest.json); pass --bundle DIR", file=sys.stderr)
        return 1
    try:
        res = (profile_step(a.bundle, a.context, a.steps, a.threads) if a.graph == "step" else
               profile_mimi(a.bundle, a.frames_per_call, a.steps, a.threads))
    except ValueError as e:
        print(f"profile: error: {e}", file=sys.stderr)
        return 1
    if a.kernels:
        res["kernels"] = kernel_rates(a.threads)
    print(markdown(res))
    if a.out is not None:
        from omni_onnx.atomic_file import write_bytes_atomic
        write_bytes_atomic(a.out, (json.dumps(res, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
