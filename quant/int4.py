"""4-bit weights for the decode graphs: onnxruntime's blockwise `MatMulNBits` (weight-only, one fp32 scale and a
4-bit zero point per block of `block_size` inputs), computed in int8 (accuracy_level 4: the activations are
quantized per block too, so the kernel is an int8 dot product; level 0 dequantizes to fp32 and was measured ~2x
slower, dependency findings section 4)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx


def matmul_nbits(src: Path, dst: Path, block_size: int, accuracy_level: int) -> None:
    """Write `src` with every MatMul whose B is a constant [K, N] replaced by a 4-bit MatMulNBits to `dst`."""
    # imported here: the module calls logging.basicConfig(level=INFO) at import, which must not precede ours
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=accuracy_level,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(onnx.load(src), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
