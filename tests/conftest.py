"""Shared fixtures: tiny random checkpoints (released formats) and the bundles exported from them, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_onnx.config import TINY


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from omni_onnx.export.random_checkpoint import write_random_pth
    return write_random_pth(tmp_path_factory.mktemp("ckpt") / "sft_omni_768.pth", TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_mimi(tmp_path_factory) -> Path:
    from omni_onnx.export.random_mimi import write_random_mimi
    return write_random_mimi(tmp_path_factory.mktemp("mimi") / "mimi", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tiny_mimi, tmp_path_factory) -> Path:
    """Exported through the CLI's own code path, parity checks included."""
    from omni_onnx.export.cli import export_bundle
    from omni_onnx.export.voices import RELEASED_VOICE_FILES
    return export_bundle(tiny_checkpoint, tiny_mimi, list(RELEASED_VOICE_FILES),
                         tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def tiny_torch_model(tiny_checkpoint):
    from omni_onnx.export.checkpoint import load_model
    return load_model(tiny_checkpoint)
