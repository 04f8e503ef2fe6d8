"""Random-weight SigLIP2 vision folders in the released `siglip2-base-p32-256-ve` layout (no download needed).

The folder is what upstream's transformers 4.x `SiglipVisionModel.save_pretrained` writes (config.json +
model.safetensors, keys `vision_model.*`, pooling head included) plus the `preprocessor_config.json` of Google's
fixed-resolution SigLIP2 checkpoints, which `SiglipImageProcessor` reads.
transformers' init leaves every LayerNorm at weight 1 / bias 0, so those are re-drawn: a parity check would
otherwise not notice a swapped or dropped norm affine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import SiglipVisionConfig, SiglipVisionModel

from omni_onnx.config import TINY

SIZES = ("tiny", "full")
WEIGHTS, PREFIX = "model.safetensors", "vision_model."

# Google's siglip2 fixed-res preprocessor_config.json: PIL BILINEAR (2) to exactly 256x256, x/255, (x-0.5)/0.5.
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 256, "width": 256},
}


def random_siglip_config(size: str) -> SiglipVisionConfig:
    """"full": SigLIP2-base-p32-256 (94.6 M parameters). "tiny": the same 8x8 grid of 32x32 patches on 256x256
    with 2 narrow layers, as wide as TINY's image_hidden_size so it plugs into the tiny Omni checkpoint."""
    if size == "full":
        return SiglipVisionConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=3072, patch_size=32, image_size=256)
    if size == "tiny":
        return SiglipVisionConfig(hidden_size=TINY.image_hidden_size, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=2 * TINY.image_hidden_size, patch_size=32, image_size=256)
    raise ValueError(f"unknown SigLIP size {size!r}; use one of {SIZES}")


def write_random_siglip(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a deterministic random-weight SigLIP vision folder and return it."""
    torch.manual_seed(seed)
    model = SiglipVisionModel(random_siglip_config(size)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
    out = Path(out_dir)
    model.save_pretrained(out)
    # transformers 4.x (upstream's pin, which wrote the released folder) nests the tower under `vision_model.`
    sd = load_file(out / WEIGHTS)
    save_file({PREFIX + k: v for k, v in sd.items()}, out / WEIGHTS, metadata={"format": "pt"})
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    return out
