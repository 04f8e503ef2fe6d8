"""int8 lookup tables: every constant 2-D fp32 table read only by Gather (token, code and codebook embeddings) is
stored as int8 with one scale per row, and dequantized after the lookup (`Cast(Gather(q, ids)) * Gather(s, ids)`).

onnxruntime's dynamic quantizer leaves Gather tables fp32, and a per-tensor int8 table loses too much (a row's
range differs from the table's). Per-row scales keep each looked-up vector within half a step of its own max / 127,
and only the rows a step reads are dequantized, so the lookup costs nothing measurable.
A table tied to an already-quantized MatMul weight (the Thinker's embedding = its lm_head, transposed) is not stored
twice: the lookup reads the MatMul's int8 weight along its other axis, with the MatMul's per-column scales.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_QMATMULS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def _per_row_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.rint(table / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def _tied_weight(graph: onnx.GraphProto, inits: dict[str, TensorProto], table: np.ndarray
                 ) -> tuple[str, np.ndarray] | None:
    """(name, per-column scales) of a quantized MatMul weight [D, V] that is `table` [V, D] transposed, to within
    half a quantization step, with zero points 0; None if there is none."""
    for node in graph.node:
        if node.op_type not in _QMATMULS:
            continue
        b_name, s_name = (node.input[1], node.input[2]) if node.op_type == "DynamicQuantizeMatMul" \
            else (node.input[1], node.input[3])
        b, s = inits.get(b_name), inits.get(s_name)
        if b is None or s is None or b.data_type != TensorProto.INT8 or list(b.dims) != list(table.shape[::-1]):
            continue
        zp_name = node.input[3] if node.op_type == "DynamicQuantizeMatMul" else \
            (node.input[5] if len(node.input) > 5 else "")
        if zp_name and (zp_name not in inits or np.any(numpy_helper.to_array(inits[zp_name]))):
            continue
        q, scale = numpy_helper.to_array(b).astype(np.float32), numpy_helper.to_array(s).astype(np.float32)
        if scale.shape != (table.shape[0],):
            continue
        if np.all(np.abs(q * scale - table.T) <= scale * 0.5001 + 1e-12):
            return b_name, scale
    return None


def quantize_gathers(model: onnx.ModelProto, min_elements: int = 1 << 16) -> list[str]:
    """Rewrite `model` in place; return the names of the tables made int8 (those of at least `min_elements`)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto | None]] = defaultdict(list)  # None: a graph output
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    for out in graph.output:
        users[out.name].append(None)
    done = []
    for name, init in list(inits.items()):
        nodes = users.get(name, [])
        if (init.data_type != TensorProto.FLOAT or len(init.dims) != 2 or int(np.prod(init.dims)) < min_elements
                or not nodes or not all(_row_lookup(n, name) for n in nodes)):
            continue
        table = numpy_helper.to_array(init)
        tied = _tied_weight(graph, inits, table)
        graph.initializer.remove(init)
        if tied is None:
            q, scale = _per_row_int8(table)
            q_name, axis = f"{name}_int8", 0
            graph.initializer.append(numpy_helper.from_array(q, q_name))
        else:
            q_name, axis = tied[0], 1
            scale = tied[1][:, None]
        s_name = f"{name}_row_scale"
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), s_name))
        for n in nodes:
            _rewrite(graph, n, q_name, s_name, axis)
        done.append(name)
    return done


def _row_lookup(node: onnx.NodeProto | None, table: str) -> bool:
    """True if `node` is a Gather of whole rows (axis 0) of `table`."""
    if node is None or node.op_type != "Gather" or node.input[0] != table:
        return False
    return all(helper.get_attribute_value(a) == 0 for a in node.attribute if a.name == "axis")


def _rewrite(graph: onnx.GraphProto, gather: onnx.NodeProto, q_name: str, s_name: str, axis: int) -> None:
    """Replace `gather` (table, ids -> out) by the int8 lookup and its per-row dequantization."""
    ids, out, tag = gather.input[1], gather.output[0], gather.name or gather.output[0]
    rows, cast = f"{tag}_q_rows", f"{tag}_rows_f32"
    nodes = [helper.make_node("Gather", [q_name, ids], [rows], name=f"{tag}_q", axis=axis)]
    if axis == 1:  # rows of the [D, V] MatMul weight come out as [D, *ids]: move D last
        moved = f"{tag}_q_moved"
        nodes.append(_move_first_axis_last(rows, moved, ids, graph, tag))
        rows = moved
    nodes += [helper.make_node("Cast", [rows], [cast], name=f"{tag}_cast", to=TensorProto.FLOAT),
              helper.make_node("Gather", [s_name, ids], [f"{tag}_scales"], name=f"{tag}_s", axis=0),
              helper.make_node("Mul", [cast, f"{tag}_scales"], [out], name=f"{tag}_dequant")]
    idx = list(graph.node).index(gather)
    graph.node.remove(gather)
    for k, node in enumerate(nodes):
        graph.node.insert(idx + k, node)


def _move_first_axis_last(src: str, dst: str, ids: str, graph: onnx.GraphProto, tag: str) -> onnx.NodeProto:
    rank = _rank_of(graph, ids)
    return helper.make_node("Transpose", [src], [dst], name=f"{tag}_transpose", perm=[*range(1, rank + 1), 0])


def _rank_of(graph: onnx.GraphProto, name: str) -> int:
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    raise ValueError(f"cannot tell the rank of {name}: run onnx shape inference on the graph first")
