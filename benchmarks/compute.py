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

_MATMULS = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger")
_CONVS = ("Conv", "FusedConv", "ConvInteger", "QLinearConv", "NchwcConv")
_ATTENTIONS = ("Attention", "QAttention")  # com.microsoft: packed QKV projection + softmax attention


def _node_macs(op: str, attrs: dict[str, int], inputs: list[list[int]], weight: list[int] | None,
               out: list[int]) -> int:
    """Multiply-accumulates of one node run: output elements x the contracted length, which the node's input (or
    its weight initializer) and transpose attributes give."""
    if op in _MATMULS:
        a = inputs[0]
        if attrs.get("transA"):
            k = a[0] if attrs.get("transBatchA") else a[-2]
        else:
            k = a[-1]
        return int(np.prod(out, dtype=np.int64)) * k
    if op in _CONVS and weight is not None:  # weight [out channels, in channels / group, *kernel]
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(weight[1:], dtype=np.int64))
    if op in _ATTENTIONS and weight is not None:  # input [batch, seq, hidden], weight [hidden, 3 * hidden]
        batch, seq, hidden = inputs[0]
        return batch * seq * hidden * weight[1] + 2 * batch * seq * seq * hidden
    return 0


def graph_macs(path: Path, feeds: dict[str, np.ndarray], threads: int) -> int:
    """Multiply-accumulates of every matmul, convolution and fused attention one run of the graph performs, read
    from onnxruntime's profile (which records the shapes each node actually saw; weights come from the optimized
    graph's initializers)."""
    scratch = Path(tempfile.mkdtemp(prefix="omni-macs-"))
    so = ort_session_options(SessionOptions(threads=threads))
    so.enable_profiling, so.profile_file_prefix = True, os.fspath(scratch / "profile")
    so.optimized_model_filepath = os.fspath(scratch / "optimized.onnx")
    sess = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath)
    init = {t.name: list(t.dims) for t in optimized.graph.initializer}
    nodes = {n.name: n for n in optimized.graph.node}
    sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text(encoding="utf-8"))
    total = 0
    for e in events:
        op = e.get("args", {}).get("op_name")
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or op not in _MATMULS + _CONVS + _ATTENTIONS:
            continue
        node = nodes.get(e["name"][: -len("_kernel_time")])
        shapes = [next(iter(d.values())) for d in e["args"].get("input_type_shape", [])]
        out = [next(iter(d.values())) for d in e["args"].get("output_type_shape", [])]
        if node is None or not shapes or not out:
            continue
        weight = next((init[i] for i in node.input[1:2] if i in init), None)
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        total += _node_macs(op, attrs, shapes, weight, out[0])
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
    return sum(_streamed_bytes(onnx.load(os.fspath(path)).graph) for path in paths)


def _streamed_bytes(graph: onnx.GraphProto) -> int:
    """A graph's streamed initializers; a MoE layer's experts (If branches, export/moe_branches.py) count as one of
    them, their mean: a decode position runs one expert per layer."""
    streamed = {name for node in graph.node if node.op_type != "Gather" for name in node.input}
    total = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer if t.name in streamed)
    experts: dict[str, list[int]] = {}
    for node in graph.node:
        if node.op_type == "If":
            then = next(a.g for a in node.attribute if a.name == "then_branch")
            experts.setdefault(node.name.split("/experts.")[0], []).append(_streamed_bytes(then))
    return total + sum(sum(b) // len(b) for b in experts.values())
