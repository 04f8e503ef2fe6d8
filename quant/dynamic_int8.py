"""The int8 pass for one graph: dynamic (per-run activation scales) int8 weights on the recipe's operators, then
onnxruntime's portable graph optimizations saved into the file so loading does not redo them.

Graph inputs and outputs are untouched by both steps; the result is checked against the graph's contract before
it is accepted, and the offline optimization is dropped (with a warning) if it would change the contract.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnxruntime as ort
from omni_onnx.contracts import ContractError, GraphSpec
from omni_onnx.session import SessionOptions, check_contract, make_session, ort_session_options
from onnxruntime.quantization import QuantType, quantize_dynamic

from .recipes import DYNAMIC_INT8, GraphRecipe

log = logging.getLogger(__name__)


def optimize_offline(src: Path, dst: Path, opts: SessionOptions) -> None:
    """Save onnxruntime's "extended" optimizations (fusions that run on any CPU; "all" would bake in this
    machine's memory layouts) into `dst`."""
    so = ort_session_options(opts)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = os.fspath(dst)
    ort.InferenceSession(os.fspath(src), sess_options=so, providers=["CPUExecutionProvider"])


def quantize_graph(src: Path, dst: Path, recipe: GraphRecipe, spec: GraphSpec,
                   opts: SessionOptions) -> Path:
    """Write `src` quantized by `recipe` to `dst`, keeping `spec` (the graph's contract)."""
    if recipe.method != DYNAMIC_INT8:
        shutil.copyfile(src, dst)
        return dst
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        q = Path(tmp) / "quantized.onnx"
        quantize_dynamic(src, q, op_types_to_quantize=list(recipe.op_types), per_channel=recipe.per_channel,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        if recipe.optimize_offline:
            o = Path(tmp) / "optimized.onnx"
            optimize_offline(q, o, opts)
            try:
                check_contract(make_session(o, opts), spec)
                q = o
            except ContractError as e:
                log.warning("%s: offline optimization changed the contract (%s); keeping the unoptimized graph",
                            spec.graph, e)
        shutil.move(q, dst)
    check_contract(make_session(dst, opts), spec)
    return dst
