"""The quantization pass for one graph: for a MatMulNBits recipe first its blockwise weights (nbits.py), then dynamic
(per-run activation scales) int8 weights on the recipe's remaining operators (inside If branches too: a MoE graph's
experts, export/moe_branches.py), onnxruntime's portable graph optimizations saved into the file so loading does
not redo them, int8 lookup tables (gather_int8.py) and fp16 storage of the remaining large fp32 weights
(fp16_storage.py).

Graph inputs and outputs are untouched by every step; the result is checked against the graph's contract before
it is accepted, and the offline optimization is dropped (with a warning) if it would change the contract.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import onnxruntime as ort
from omni_onnx.contracts import ContractError, GraphSpec
from omni_onnx.session import (DISABLED_OPTIMIZERS, SessionOptions, check_contract, make_session,
                               ort_session_options)
from onnxruntime.quantization import QuantType, quantize_dynamic

from .fp16_storage import store_fp16
from .gather_int8 import quantize_gathers
from .nbits import matmul_nbits
from .recipes import FP16_WEIGHTS, MATMUL_NBITS, GraphRecipe

log = logging.getLogger(__name__)


def optimize_offline(src: Path, dst: Path, opts: SessionOptions) -> None:
    """Save onnxruntime's "extended" optimizations (fusions that run on any CPU; "all" would bake in this
    machine's memory layouts) into `dst`."""
    so = ort_session_options(opts)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = os.fspath(dst)
    ort.InferenceSession(os.fspath(src), sess_options=so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=DISABLED_OPTIMIZERS)


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizers log on the root logger: every tensor at INFO (123 lines for a tiny bundle) and a
    pre-processing advice at WARNING per graph. The CLIs print one line per graph instead; our own loggers have
    their own levels, so only the root logger's records are held back."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def int8_weights(src: Path, dst: Path, recipe: GraphRecipe) -> None:
    """onnxruntime's dynamic int8 pass on the recipe's operators (7-bit weights: see recipes.py)."""
    quantize_dynamic(src, dst, op_types_to_quantize=list(recipe.op_types), per_channel=recipe.per_channel,
                     weight_type=QuantType.QInt8, reduce_range=True,
                     extra_options={"MatMulConstBOnly": True, "EnableSubgraph": True})


def recipe_weights(src: Path, dst: Path, recipe: GraphRecipe, work: Path) -> None:
    """The recipe's weight passes alone (`work`: a folder for the step between them): its MatMulNBits blocks
    first, then dynamic int8 on the operators left; FP16_WEIGHTS quantizes nothing."""
    with quiet_quantizer():
        if recipe.method == MATMUL_NBITS:
            nbits = work / f"{dst.stem}.nbits.onnx"
            matmul_nbits(src, nbits, recipe.bits, recipe.block_size, recipe.accuracy_level, recipe.symmetric,
                         recipe.gemms)
            src = nbits
        if recipe.method == FP16_WEIGHTS:
            shutil.copyfile(src, dst)
        else:
            int8_weights(src, dst, recipe)


def quantize_graph(src: Path, dst: Path, recipe: GraphRecipe, spec: GraphSpec,
                   opts: SessionOptions) -> Path:
    """Write `src` quantized by `recipe` to `dst`, keeping `spec` (the graph's contract)."""
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        q = Path(tmp) / "quantized.onnx"
        recipe_weights(src, q, recipe, Path(tmp))
        if recipe.optimize_offline:
            o = Path(tmp) / "optimized.onnx"
            optimize_offline(q, o, opts)
            try:
                check_contract(make_session(o, opts), spec)
                q = o
            except ContractError as e:
                log.warning("%s: offline optimization changed the contract (%s); keeping the unoptimized graph",
                            spec.graph, e)
        # after the offline optimization: a table tied to a fused int8 MatMul is then shared with it, and the
        # fp16 weights' Casts are not folded back into fp32
        model = onnx.load(q)
        changed = quantize_gathers(model) if recipe.int8_tables else []
        changed += store_fp16(model) if recipe.fp16_storage else []
        if changed:
            onnx.save(model, q)
        shutil.move(q, dst)
    check_contract(make_session(dst, opts), spec)
    return dst
