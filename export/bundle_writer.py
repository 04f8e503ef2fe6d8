"""Writes a bundle's manifest.json (versions, contracts, config, checksums) and its tokenizer files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from omni_onnx import BUNDLE_FORMAT_VERSION, __version__
from omni_onnx.bundle import MANIFEST, sha256_file
from omni_onnx.config import ModelConfig
from omni_onnx.contracts import GraphSpec

from .voices import ASSETS

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# The oldest onnxruntime each bundle kind runs on with omni-run's bytes, measured (docs/step-protocol.md section 13):
# 1.20-1.28 give the same ids and codes, WAV samples within 1 LSB. The dynamic graphs' cache matmuls are guarded
# against the first call's empty cache (empty_past.py), which killed onnxruntime before 1.32.
MIN_ONNXRUNTIME = {"dynamic": "1.30", "static": "1.30"}


def copy_tokenizer(out: Path) -> list[str]:
    for name in TOKENIZER_FILES:
        shutil.copyfile(ASSETS / name, out / name)
    shutil.copyfile(ASSETS / "LICENSE", out / "LICENSE.minimind-o")
    return [*TOKENIZER_FILES, "LICENSE.minimind-o"]


def write_manifest(out: Path, cfg: ModelConfig, graphs: dict[str, tuple[Path, GraphSpec]], files: list[str],
                   voices: list[str], source: dict[str, Any], sections: dict[str, Any],
                   random_weights: bool = False) -> Path:
    """Graphs and files are given relative to `out`; their sha256 are computed here. `sections`: the optional
    graphs' settings (mimi, vision, speech) and the static shapes, each null when that graph is absent.
    `random_weights`: a demo bundle, which the runtime announces (top-level "random_weights": true)."""
    manifest = {
        **({"random_weights": True} if random_weights else {}),
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exporter": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "min_onnxruntime": MIN_ONNXRUNTIME["static" if sections.get("static") else "dynamic"],
        "source": source,
        "config": cfg.to_dict(),
        **{k: sections.get(k) for k in ("mimi", "vision", "speech", "static")},
        "graphs": {name: {"file": path.name, "sha256": sha256_file(out / path.name), "contract": spec.to_dict()}
                   for name, (path, spec) in graphs.items()},
        "files": {rel: sha256_file(out / rel) for rel in files},
        "voices": voices,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
