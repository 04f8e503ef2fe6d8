"""One weights file for a static bundle's Thinker/Talker graphs.

The decode and prefill graph of each model hold the same weights (only the chunk size differs), so each distinct
initializer is stored once, in `static_weights.bin`, and every graph refers to it as onnx external data (offset,
length): onnxruntime and onnxruntime-node read external data relative to the graph file, so each graph still opens
on its own. Small initializers (shape constants, norm weights) stay inside their graph.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

WEIGHTS_FILE = "static_weights.bin"
MIN_BYTES = 4096  # smaller initializers stay inside their graph
ALIGN = 64


def share_weights(root: Path, graph_files: list[str]) -> str:
    """Move every initializer of at least MIN_BYTES of `graph_files` (relative to `root`, loaded with any external
    data they have) into `root/WEIGHTS_FILE`, one copy per distinct (dtype, shape, bytes), and rewrite the graphs in
    place. Returns WEIGHTS_FILE."""
    stored: dict[bytes, tuple[int, int]] = {}  # content digest -> (offset, length)
    models = [onnx.load(os.fspath(root / rel)) for rel in graph_files]  # before the old weights file is replaced
    tmp = root / (WEIGHTS_FILE + ".tmp")
    with open(tmp, "wb") as blob:
        for model in models:
            for t in model.graph.initializer:
                array = numpy_helper.to_array(t)
                data = array.tobytes()
                if len(data) < MIN_BYTES:
                    continue
                key = hashlib.sha256(f"{array.dtype}{array.shape}".encode() + data).digest()
                if key not in stored:
                    blob.write(b"\0" * (-blob.tell() % ALIGN))
                    stored[key] = (blob.tell(), len(data))
                    blob.write(data)
                t.CopyFrom(numpy_helper.from_array(array, t.name))
                set_external_data(t, WEIGHTS_FILE, *stored[key])
                t.ClearField("raw_data")
    os.replace(tmp, root / WEIGHTS_FILE)
    for rel, model in zip(graph_files, models):
        onnx.save(model, os.fspath(root / rel))
    return WEIGHTS_FILE
