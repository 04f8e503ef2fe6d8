"""Guard the attention's matmuls over the cache against an empty cache, for onnxruntime before 1.32.

A fresh conversation feeds `past_*` tensors with zero positions (step protocol, section 3). onnxruntime's
MatmulTransposeFusion turns each Transpose + MatMul over the cache into a FusedMatMul with batch-transposed
operands, and before 1.32 that kernel divides by zero on a zero-length operand (SIGFPE in native builds, a trap in
WebAssembly). The fusion is what keeps decode free of cache-sized copies, so it stays; instead each such MatMul
moves, with its Transpose, into the `else` branch of an If on "the cache is empty", whose `then` branch builds the
product's (all-zero or empty) result from shapes alone. Only the first call of a conversation takes that branch.
The cost is one If per cache matmul per step (measured: see docs/step-protocol.md, "onnxruntime versions").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

PAST_PREFIXES = ("past_key_", "past_value_")
EMPTY = "empty_past"  # the graph's one condition: bool [1], True when the cache holds no position


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _cache_source(name: str, producers: dict[str, onnx.NodeProto], inputs: set[str]) -> str | None:
    """The past_* graph input that `name` is (through Reshapes), or None."""
    while name not in inputs:
        node = producers.get(name)
        if node is None or node.op_type != "Reshape":
            return None
        name = node.input[0]
    return name if name.startswith(PAST_PREFIXES) else None


def _perm(transpose: onnx.NodeProto) -> list[int]:
    return list(helper.get_attribute_value(next(a for a in transpose.attribute if a.name == "perm")))


def _float_output(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _empty_product(matmul: onnx.NodeProto, transpose: onnx.NodeProto) -> onnx.GraphProto:
    """then-branch: zeros shaped like MatMul(a, Transpose(b)), computed from shapes (b is empty here, so its
    Transpose costs nothing and no MatMul runs)."""
    a, b = matmul.input[0], transpose.input[0]
    p = matmul.name
    nodes = [
        helper.make_node("Transpose", [b], [f"{p}/empty_bt"], perm=_perm(transpose)),
        helper.make_node("Shape", [a], [f"{p}/empty_rows"], end=-1),
        helper.make_node("Shape", [f"{p}/empty_bt"], [f"{p}/empty_cols"], start=-1),
        helper.make_node("Concat", [f"{p}/empty_rows", f"{p}/empty_cols"], [f"{p}/empty_shape"], axis=0),
        helper.make_node("ConstantOfShape", [f"{p}/empty_shape"], [f"{p}/empty_out"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
    ]
    return helper.make_graph(nodes, f"{p}/then", [], [_float_output(f"{p}/empty_out")])


def _product(matmul: onnx.NodeProto, transpose: onnx.NodeProto) -> onnx.GraphProto:
    """else-branch: the original Transpose + MatMul, together so onnxruntime still fuses them."""
    p = matmul.name
    inner_t = helper.make_node("Transpose", list(transpose.input), [f"{p}/bt"], name=f"{transpose.name}/in",
                               perm=_perm(transpose))
    inner_m = helper.make_node("MatMul", [matmul.input[0], f"{p}/bt"], [f"{p}/out"], name=f"{p}/in")
    return helper.make_graph([inner_t, inner_m], f"{p}/else", [], [_float_output(f"{p}/out")])


def guard_model(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place; returns how many matmuls were guarded (0: no Transpose + MatMul over the cache)."""
    g = model.graph
    inputs = {i.name for i in g.input}
    producers = _producers(g)
    users: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            users[i] = users.get(i, 0) + 1
    guarded, first_past, nodes = 0, None, []
    for node in g.node:
        transpose = None
        t = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        if t is not None and t.op_type == "Transpose" and users[node.input[1]] == 1:
            source = _cache_source(t.input[0], producers, inputs)
            if source is not None:
                transpose, first_past = t, first_past or source
        if transpose is None:
            nodes.append(node)
            continue
        nodes.remove(transpose)  # it moves into the else branch
        nodes.append(helper.make_node("If", [EMPTY], list(node.output), name=f"{node.name}/if_empty_past",
                                      then_branch=_empty_product(node, transpose),
                                      else_branch=_product(node, transpose)))
        guarded += 1
    if guarded:
        # one condition for the graph: every past_* input has the same number of positions
        cond = [helper.make_node("Shape", [first_past], [f"{EMPTY}/positions"], start=1, end=2),
                helper.make_node("Equal", [f"{EMPTY}/positions", f"{EMPTY}/zero"], [EMPTY])]
        g.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), f"{EMPTY}/zero"))
        del g.node[:]
        g.node.extend(cond + nodes)
    return guarded


def guard_empty_past(path: Path) -> int:
    """Apply guard_model to the graph file at `path` (rewritten through a temporary file)."""
    model = onnx.load(os.fspath(path))
    guarded = guard_model(model)
    if guarded:
        tmp = path.with_suffix(".guarded.onnx")
        onnx.save(model, os.fspath(tmp))
        os.replace(tmp, path)
    return guarded
