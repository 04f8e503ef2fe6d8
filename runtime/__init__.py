"""omni-onnx: the on-device runtime for MiniMind-O (text, speech and image in; text and streaming speech out).

The runtime imports numpy, onnxruntime and tokenizers only; torch lives in `omni_onnx.export`.
"""

__version__ = "0.1.0"

# Bump when a bundle written by an older exporter can no longer be read (graph contracts, manifest keys).
BUNDLE_FORMAT_VERSION = 1
