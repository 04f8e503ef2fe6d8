"""Audio projector graph: SenseVoice features [1, seq, 512] -> Thinker embeddings [1, seq, 768] (LayerNorm, Linear,
exact GELU, Linear; upstream `MMAudioProjector`, keys `audio_proj.mlp.*`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from omni_onnx.config import ModelConfig
from omni_onnx.contracts import audio_projector_spec

from .common import export_graph, run_onnx, to_numpy, verify_parity
from .modeling import OmniTorchModel

FILENAME = "audio_projector.onnx"


class AudioProjectorGraph(nn.Module):
    def __init__(self, model: OmniTorchModel):
        super().__init__()
        self.model = model

    def forward(self, audio_features: Tensor) -> Tensor:
        return self.model.audio_project(audio_features)


def dummy_inputs(cfg: ModelConfig, seq: int = 5, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"audio_features": torch.randn(1, seq, cfg.audio_hidden_size, generator=g)}


def export(model: OmniTorchModel, out_dir: str | Path) -> Path:
    """Write `out_dir/audio_projector.onnx`."""
    return export_graph(AudioProjectorGraph(model), dummy_inputs(model.cfg), audio_projector_spec(model.cfg),
                        Path(out_dir) / FILENAME)


def verify(model: OmniTorchModel, path: str | Path, lengths: tuple[int, ...] = (1, 17, 100)) -> None:
    """ONNX vs torch at several lengths (the encoder's frame count varies with the clip); raises ParityError."""
    spec = audio_projector_spec(model.cfg)
    for n in lengths:
        feeds = dummy_inputs(model.cfg, n, seed=n)
        with torch.no_grad():
            ref = {"audio_embeds": model.audio_project(feeds["audio_features"])}
        verify_parity(spec, to_numpy(ref), run_onnx(path, to_numpy(feeds)), label=f"seq={n}")
