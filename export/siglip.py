"""Vision graph: SigLIP2 vision tower + MiniMind-O's vision projector, one ONNX graph.

    pixel_values [1,3,256,256] -> patch conv + learned positions -> 12 pre-LN layers -> post_layernorm
      = upstream's `last_hidden_state` [1,64,768] (the pooling head is never run) -> vision_proj -> [1,64,hidden]

The projector is folded in (unlike the audio one, whose input also feeds the CTC head): nothing else reads the
tower's output, and a second session would only add a call and a copy per image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import SiglipVisionModel

from omni_onnx.contracts import vision_spec
from omni_onnx.image import PREPROCESSOR_FILE

from .common import export_graph, verify_graph
from .modeling import OmniTorchModel

FILENAME = "vision.onnx"
_FIX = "pass upstream's SigLIP2 vision folder (siglip2-base-p32-256-ve)"


def load_siglip(folder: str | Path) -> SiglipVisionModel:
    """Load the HF vision-tower folder (config.json + weights + preprocessor_config.json) as upstream does, fp32."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"SigLIP folder {folder} does not exist; {_FIX}")
    for name in ("config.json", PREPROCESSOR_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder / name} is missing; {_FIX}")
    model, info = SiglipVisionModel.from_pretrained(folder, output_loading_info=True, dtype=torch.float32)
    missing = [k for k in info["missing_keys"] if not k.removeprefix("vision_model.").startswith("head.")]
    if missing:  # the pooling head may be absent: it is never run
        raise ValueError(f"{folder} lacks {len(missing)} vision-tower weights (e.g. {missing[:3]}); "
                         f"the folder is incomplete or not a SigLIP vision checkpoint")
    return model.eval()


def preprocessor_config(folder: str | Path) -> dict[str, Any]:
    """The folder's image-processor settings, for the bundle (the runtime preprocesses with them)."""
    return json.loads((Path(folder) / PREPROCESSOR_FILE).read_text())


def image_size(siglip: SiglipVisionModel) -> int:
    return int(siglip.config.image_size)


class VisionGraph(nn.Module):
    """vision_spec signature: pixel_values -> (image_embeds,)."""

    def __init__(self, siglip: SiglipVisionModel, model: OmniTorchModel):
        super().__init__()
        cfg, vc = model.cfg, siglip.config
        patches = (vc.image_size // vc.patch_size) ** 2
        if vc.hidden_size != cfg.image_hidden_size or patches != cfg.image_token_len:
            raise ValueError(f"SigLIP folder gives {patches} patches of width {vc.hidden_size}; the checkpoint's "
                             f"vision projector expects {cfg.image_token_len} of width {cfg.image_hidden_size}. "
                             f"Pair the checkpoint with the SigLIP folder it was trained with")
        self.siglip, self.model = siglip, model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor]:
        s = self.siglip
        h = s.encoder(inputs_embeds=s.embeddings(pixel_values)).last_hidden_state
        return (self.model.vision_project(s.post_layernorm(h)),)


def dummy_inputs(size: int, seed: int = 0) -> dict[str, Tensor]:
    """Pixel values in the preprocessed range [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.rand(1, 3, size, size, generator=g) * 2 - 1}


def reference_outputs(siglip: SiglipVisionModel, model: OmniTorchModel, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
    """Upstream's computation through transformers' public forward (independent of the wrapper)."""
    with torch.no_grad():
        hidden = siglip(pixel_values=feeds["pixel_values"]).last_hidden_state
        return {"image_embeds": model.vision_project(hidden)}


def export(siglip: SiglipVisionModel, model: OmniTorchModel, out_dir: str | Path) -> Path:
    """Write `out_dir/vision.onnx` (single file, weights inside)."""
    spec = vision_spec(model.cfg, image_size(siglip))
    return export_graph(VisionGraph(siglip, model), dummy_inputs(image_size(siglip)), spec, Path(out_dir) / FILENAME)


def verify(siglip: SiglipVisionModel, model: OmniTorchModel, path: str | Path,
           seeds: tuple[int, ...] = (1, 2)) -> dict[str, dict[str, float]]:
    """Parity of the graph at `path` (opened through GraphSession) against transformers + our projector."""
    cases = []
    for seed in seeds:
        feeds = dummy_inputs(image_size(siglip), seed)
        cases.append((f"seed={seed}", feeds, reference_outputs(siglip, model, feeds)))
    return verify_graph(path, vision_spec(model.cfg, image_size(siglip)), cases)
