"""Run only the chosen MoE experts: each expert of an exported graph moves into the `then` branch of an ONNX If.

The traced MoE (modeling.TopOneMoE) runs every expert and keeps the router's choice with a one-hot; a decode step
then reads 4x the FFN weights. Here each expert's nodes (the exporter names them `.../mlp/experts.<e>/...`) and
the weights only they use move into an If whose condition is "some position chose expert e" (the max of its
one-hot column); its `else` branch gives zeros. The one-hot product and the sum over experts stay as traced, so the
result is bit-identical: the chosen expert's output times 1.0, plus zeros. A decode step (one position) runs one
expert per layer; a prefill runs every expert some position chose. onnxruntime's dynamic quantizer quantizes the
branches' MatMuls (`EnableSubgraph`), and its optimizer and weight prepacking work inside them.
"""

from __future__ import annotations

import re
from collections import defaultdict

import onnx
from onnx import TensorProto, helper

EXPERT_SCOPE = re.compile(r"^(.*/mlp)/experts\.(\d+)/")
SHARED_BYTES = 1024  # a small initializer several experts use (split sizes) is copied into each branch


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def branch_experts(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place so each expert runs only when chosen; returns how many experts were branched."""
    graph = model.graph
    groups: dict[tuple[str, int], list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        m = EXPERT_SCOPE.match(node.name)
        if m:
            groups[(m.group(1), int(m.group(2)))].append(node)
    if not groups:
        return 0
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    grouped = {id(n) for nodes in groups.values() for n in nodes}
    moved: set[str] = set()
    inner: set[str] = set()  # values now computed inside a branch
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(consumer Mul) -> nodes to insert before it
    for (scope, e), nodes in groups.items():
        ids = {id(n) for n in nodes}
        produced = {o for n in nodes for o in n.output}
        leaving = [v for v in produced if v in graph_outputs or any(id(u) not in ids for u in users[v])]
        if len(leaving) != 1 or len(users[leaving[0]]) != 1 or users[leaving[0]][0].op_type != "Mul":
            raise ValueError(f"{scope}/experts.{e}: expected one output, scaled by one Mul with the router's "
                             f"one-hot; found outputs {leaving}")
        out = leaving[0]
        inner |= produced - {out}
        scale = users[out][0]
        onehot = next(v for v in scale.input if v != out)
        needed = {v for n in nodes for v in n.input if v and v not in produced}
        branch_inits = []
        for v in sorted(needed & inits.keys()):
            if all(id(u) in ids for u in users[v]):
                branch_inits.append(inits[v])
                moved.add(v)
            elif inits[v].ByteSize() <= SHARED_BYTES:
                branch_inits.append(inits[v])
                if all(id(u) in grouped for u in users[v]):
                    moved.add(v)
        x = [v for v in needed if v not in inits]
        if len(x) != 1:
            raise ValueError(f"{scope}/experts.{e}: expected one input besides weights, found {x}")
        tag = f"{scope}/experts.{e}"
        then_out, else_out = f"{tag}/then_output", f"{tag}/else_output"
        for n in nodes:
            n.output[:] = [then_out if o == out else o for o in n.output]
        then_g = helper.make_graph(nodes, f"{tag}/then", [],
                                   [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, None)], branch_inits)
        # zeros shaped like the expert's input (its output's shape): onnxruntime plans the If's output buffer
        # from one shape, so a broadcastable scalar zero is refused
        zeros = [helper.make_node("Shape", x, [f"{tag}/input_shape"], name=f"{tag}/input_shape"),
                 helper.make_node("ConstantOfShape", [f"{tag}/input_shape"], [else_out], name=f"{tag}/zeros",
                                  value=helper.make_tensor(f"{tag}/zero", TensorProto.FLOAT, [1], [0.0]))]
        else_g = helper.make_graph(zeros, f"{tag}/else", [],
                                   [helper.make_tensor_value_info(else_out, TensorProto.FLOAT, None)])
        chosen = [helper.make_node("ReduceMax", [onehot], [f"{tag}/chosen_max"], name=f"{tag}/chosen_max", keepdims=0),
                  helper.make_node("Cast", [f"{tag}/chosen_max"], [f"{tag}/chosen"], name=f"{tag}/chosen",
                                   to=TensorProto.BOOL),
                  helper.make_node("If", [f"{tag}/chosen"], [out], name=f"{tag}/if", then_branch=then_g,
                                   else_branch=else_g)]
        replaced[id(scale)] = chosen
    rest = []
    for node in graph.node:
        if id(node) not in grouped:
            rest += replaced.get(id(node), []) + [_copy(node)]
    _replace(graph.node, rest)
    _replace(graph.initializer, [_copy(t) for t in graph.initializer if t.name not in moved])
    _replace(graph.value_info, [_copy(v) for v in graph.value_info if v.name not in inner])
    return len(groups)


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def _replace(field, items: list) -> None:
    del field[:]
    field.extend(items)
