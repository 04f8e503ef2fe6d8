"""The compute floor of the encoder graphs: their matmul FLOPs ÷ the fp32 matmul throughput measured now.

Decode is memory-bound, so its floor is weight bytes ÷ DRAM bandwidth (benchmarks/machine.py). The encoders run a
whole clip or image at once and are compute-bound; no implementation can beat FLOPs ÷ the machine's best matmul
rate, so that is the yardstick their times are given against.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from omni_onnx.session import SessionOptions, ort_session_options

_MATMULS = ("MatMul", "FusedMatMul", "Gemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger")


def _matmul_macs(x: list[int], w: list[int]) -> int:
    batch = np.broadcast_shapes(tuple(x[:-2]), tuple(w[:-2])) if len(w) > 2 else tuple(x[:-2])
    return int(np.prod(batch, dtype=np.int64)) * x[-2] * x[-1] * w[-1] if len(x) > 1 else x[-1] * w[-1]


def graph_macs(path: Path, feeds: dict[str, np.ndarray], threads: int) -> int:
    """Multiply-accumulates of every matmul one run of the graph performs, read from onnxruntime's profile (which
    records the shapes each node actually saw; weights come from the optimized graph's initializers)."""
    scratch = Path(tempfile.mkdtemp(prefix="omni-macs-"))
    so = ort_session_options(SessionOptions(threads=threads))
    so.enable_profiling, so.profile_file_prefix = True, os.fspath(scratch / "profile")
    so.optimized_model_filepath = os.fspath(scratch / "optimized.onnx")
    sess = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath)
    init = {t.name: list(t.dims) for t in optimized.graph.initializer}
    weights = {n.name: [init[i] for i in n.input[1:2] if i in init] for n in optimized.graph.node}
    trans_b = {n.name for n in optimized.graph.node
               if any(a.name == "transB" and a.i for a in n.attribute)}
    sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text(encoding="utf-8"))
    total = 0
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["args"].get("op_name") not in _MATMULS:
            continue
        shapes = [next(iter(d.values())) for d in e["args"].get("input_type_shape", [])]
        node = e["name"][: -len("_kernel_time")]
        if len(shapes) < 2 or weights.get(node):  # weights listed separately when they are initializers
            shapes = shapes[:1] + weights.get(node, [])[:1]
        if node in trans_b:
            shapes[1] = shapes[1][::-1]
        total += _matmul_macs(shapes[0], shapes[1])
    return total


def matmul_gflops(threads: int, m: int = 128, k: int = 1024, n: int = 4096, repeats: int = 20) -> float:
    """Best fp32 matmul throughput onnxruntime reaches here now (GFLOP/s), on an encoder-like shape."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), ort_session_options(SessionOptions(threads=threads)),
                                providers=["CPUExecutionProvider"])
    x = {"x": rng.standard_normal((m, k), dtype=np.float32)}
    for _ in range(3):
        sess.run(None, x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, x)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def streamed_weight_bytes(paths: list[Path]) -> int:
    """Bytes of weights one call of these graphs reads whole: every initializer some node other than a Gather
    consumes (a Gather reads only the rows it looks up). Counted from the files, so an int8 or int4 graph's floor is
    its own: quantized weights and their scales, at the size they are stored."""
    total = 0
    for path in paths:
        graph = onnx.load(os.fspath(path)).graph
        streamed = {name for node in graph.node if node.op_type != "Gather" for name in node.input}
        total += sum(numpy_helper.to_array(t).nbytes for t in graph.initializer if t.name in streamed)
    return total
