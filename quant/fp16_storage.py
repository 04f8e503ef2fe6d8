"""fp16 on disk, fp32 at run time: large fp32 weights the quantizers leave alone (Mimi's convolutions and codebooks,
SigLIP's patch embedding) are stored as float16 behind a Cast to float32. onnxruntime folds the Cast of a constant
when the session loads, so the graph computes in fp32 exactly as before, on weights rounded to fp16 (relative
error <= 2^-11); the file shrinks by half of those weights, memory and speed are unchanged.

Applied after the offline optimization, which would otherwise fold the Casts back into fp32 initializers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_FP16_MAX = float(np.finfo(np.float16).max)


def store_fp16(model: onnx.ModelProto, min_elements: int = 1 << 16) -> list[str]:
    """Rewrite `model` in place; return the names of the fp32 initializers (of at least `min_elements`, all values
    within fp16's range) now stored as fp16."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    done = []
    for k, init in enumerate(list(graph.initializer)):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements or init.name in outputs:
            continue
        value = numpy_helper.to_array(init)
        if not np.all(np.abs(value) <= _FP16_MAX):
            continue
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float16), f"{init.name}_fp16"))
        graph.node.insert(0, helper.make_node("Cast", [f"{init.name}_fp16"], [init.name],
                                              name=f"{init.name}_to_fp32", to=TensorProto.FLOAT))
        done.append(init.name)
    return done
