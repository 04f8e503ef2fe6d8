"""Vision graph (SigLIP tower + vision projector) vs transformers' SiglipVisionModel + our projector, on the tiny
random folder in the released layout: random pixels and the whole image path (file -> runtime preprocessing ->
graph vs file -> SiglipImageProcessor -> torch)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omni_onnx.contracts import vision_spec
from omni_onnx.export import siglip
from omni_onnx.export.modeling import OmniTorchModel
from omni_onnx.export.random_siglip import write_random_siglip
from omni_onnx.image import ImagePreprocessor, preprocess_image
from omni_onnx.session import GraphSession

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return write_random_siglip(tmp_path_factory.mktemp("siglip") / "siglip2-base-p32-256-ve", "tiny", seed=0)


@pytest.fixture(scope="module")
def exported(tiny_siglip_dir, tiny_torch_model, tmp_path_factory):
    tower = siglip.load_siglip(tiny_siglip_dir)
    return tower, siglip.export(tower, tiny_torch_model, tmp_path_factory.mktemp("vision"))


def test_random_pixels_parity(exported, tiny_torch_model):
    tower, path = exported
    diffs = siglip.verify(tower, tiny_torch_model, path)
    assert all(d["image_embeds"] <= 1e-4 for d in diffs.values()), diffs


def test_image_file_to_embeddings_matches_upstream_path(exported, tiny_torch_model, tiny_siglip_dir):
    """What the runtime injects for an eval image equals upstream's vision_proj(SiglipVisionModel(processor(...)))."""
    from transformers import SiglipImageProcessor
    tower, path = exported
    processor = SiglipImageProcessor.from_pretrained(tiny_siglip_dir)
    prep = ImagePreprocessor.from_hf_config(siglip.preprocessor_config(tiny_siglip_dir))
    sess = GraphSession(path, vision_spec(tiny_torch_model.cfg))
    for image in sorted((FIXTURES / "eval_omni").glob("*.jpg"))[:2]:
        pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            ref = tiny_torch_model.vision_project(tower(pixel_values=pixels).last_hidden_state).numpy()
        got = sess.run({"pixel_values": preprocess_image(image, prep)})["image_embeds"]
        assert got.shape == (1, 64, tiny_torch_model.cfg.hidden_size)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4, err_msg=image.name)


def test_graph_leaves_out_the_pooling_head(exported):
    import onnx
    _, path = exported
    names = [t.name for t in onnx.load(str(path)).graph.initializer]
    assert not [n for n in names if ".head." in n or n.startswith("head.")], names


def test_folder_errors(tiny_siglip_dir, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        siglip.load_siglip(tmp_path / "nope")
    partial = shutil.copytree(tiny_siglip_dir, tmp_path / "partial")
    (partial / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="preprocessor_config.json is missing"):
        siglip.load_siglip(partial)


def _without(folder: Path, prefix: str, out: Path) -> Path:
    """A copy of `folder` whose weights lack every key starting with `prefix`."""
    from safetensors.torch import load_file, save_file
    copy = shutil.copytree(folder, out)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith(prefix)}, copy / "model.safetensors",
              metadata={"format": "pt"})
    return copy


def test_weights_load_strictly_but_the_unused_head_may_be_absent(tiny_siglip_dir, tmp_path):
    siglip.load_siglip(_without(tiny_siglip_dir, "vision_model.head.", tmp_path / "headless"))
    with pytest.raises(ValueError, match="lacks 4 vision-tower weights"):
        siglip.load_siglip(_without(tiny_siglip_dir, "vision_model.encoder.layers.1.mlp.", tmp_path / "broken"))


def test_projector_width_mismatch_is_refused(tiny_siglip_dir, tiny_torch_model):
    other = OmniTorchModel(dataclasses.replace(tiny_torch_model.cfg, image_hidden_size=32))
    with pytest.raises(ValueError, match="expects 64 of width 32"):
        siglip.VisionGraph(siglip.load_siglip(tiny_siglip_dir), other)
