"""Weight-only blockwise MatMul weights: onnxruntime's `MatMulNBits` (4 or 8 bits, one fp32 scale and a zero point
per block of `block_size` inputs), computed in int8 (accuracy_level 4: the activations are quantized per block too,
so the kernel is an int8 dot product; level 0 dequantizes to fp32 and was measured ~2x slower, dependency findings
section 4). Its one-row kernel is what a decode step runs: see recipes.py for the 8-bit measurements."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it (a MoE graph's experts sit in If branches)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _graphs(sub)


def short_matmuls(model: onnx.ModelProto, block_size: int) -> list[str]:
    """Names of the MatMuls whose constant weight has fewer inputs than a block: padded to a whole block they would
    grow (a rank-16 adapter 8x), so they stay with the dynamic int8 pass. Initializers of the outer graph count too.
    Unnamed nodes are left out: the quantizer excludes by name, and "" would exclude every unnamed MatMul."""
    weights = {t.name: t for g in _graphs(model.graph) for t in g.initializer}
    return [n.name for g in _graphs(model.graph) for n in g.node if n.name and n.op_type == "MatMul"
            and n.input[1] in weights and weights[n.input[1]].dims[0] < block_size]


def gemms_as_matmuls(model: onnx.ModelProto) -> list[str]:
    """Rewrite in place each Gemm with a constant B (alpha = beta = 1, A not transposed) as MatMul(A, [K, N] B), plus
    an Add of C unless C is all zeros; return their names. The MatMulNBits quantizer takes MatMuls only: this brings
    in the Talker's projector MLPs and the Thinker's tied lm_head (a Gemm on the embedding table, transposed here
    into a copy of its own, as the dynamic int8 MatMul's prepacking made one; the lookup keeps the table)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    attrs = lambda n: {a.name: helper.get_attribute_value(a) for a in n.attribute}
    nodes, done = [], []
    for node in graph.node:
        a = attrs(node)
        if (node.op_type != "Gemm" or node.input[1] not in inits or a.get("transA", 0)
                or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        b = inits[node.input[1]].name
        if a.get("transB", 0):
            b = f"{b}_transposed"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[1]]).T.copy(), b))
        c = node.input[2] if len(node.input) > 2 else ""
        value = numpy_helper.to_array(inits[c]) if c in inits else (
            numpy_helper.to_array(attrs(constants[c])["value"]) if c in constants else None)
        product = f"{node.output[0]}_product" if c and (value is None or np.any(value)) else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], b], [product], name=node.name))
        if product != node.output[0]:
            nodes.append(helper.make_node("Add", [product, c], [node.output[0]], name=f"{node.name}_bias"))
        done.append(node.name)
    graph.ClearField("node")
    graph.node.extend(nodes)
    return done


def matmul_nbits(src: Path, dst: Path, bits: int, block_size: int, accuracy_level: int, symmetric: bool,
                 gemms: bool) -> None:
    """Write `src` with every MatMul (and with `gemms` every Gemm, see gemms_as_matmuls) whose B is a constant
    [K, N] (K >= block_size) replaced by a `bits`-bit MatMulNBits to `dst`."""
    # imported here: the module calls logging.basicConfig(level=INFO) at import, which must not precede ours
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(src)
    if gemms:
        gemms_as_matmuls(model)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",), bits=bits)
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=short_matmuls(model, block_size), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
