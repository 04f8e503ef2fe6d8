"""What the torch-side commands need beyond the runtime install, checked before any work: a runtime-only install
(`pip install .`: numpy, onnxruntime, tokenizers) has none of it, and a `ModuleNotFoundError` deep in a run names a
module, not what to install."""

from __future__ import annotations

import importlib.util

from omni_onnx.errors import OmniError

EXPORT_INSTALL = "pip install torch==2.13.0 && pip install -e '.[export]' in the omni-onnx checkout"
EXPORT_MODULES = ("torch", "onnx", "transformers", "onnxsim", "safetensors", "yaml")
BENCH_INSTALL = "pip install -e '.[bench]' in the omni-onnx checkout"
QUANT_INSTALL = "pip install 'onnx>=1.16' (it comes with the export extra)"


class MissingExtra(OmniError):
    """A package of an optional extra is not installed (exit code 2, as for a usage error)."""


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses the module (how tests hide a package)
        return False


def require(command: str, modules: tuple[str, ...], install: str) -> None:
    """Raise MissingExtra naming the first missing module and the install command; imports nothing."""
    for module in modules:
        if not installed(module):
            raise MissingExtra(f"{command} needs the {module} package, which is not installed: {install}")
