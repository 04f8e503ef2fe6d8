"""Random-weight Mimi checkpoints in the released HF layout, for tests and benchmarks without a download.

transformers' init leaves the codebooks at zero (every code decodes to the same latent) and every layer scale at
0.01 (the transformer barely touches the signal), so parity checks on a fresh `MimiModel` would prove little.
Those tensors are re-drawn here from a seeded generator.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import MimiConfig, MimiModel

SIZES = ("tiny", "full")


def random_mimi_config(size: str) -> MimiConfig:
    """"full": the released kyutai/mimi architecture (`MimiConfig()` defaults). "tiny": the same structure
    (1920-sample frames at 24 kHz, 2048-entry codebooks, 8 quantizers, two transformer steps per frame) with few
    channels, 2 transformer layers and an 8-step sliding window, so a 20-frame test crosses the window."""
    if size == "full":
        return MimiConfig()
    if size == "tiny":
        return MimiConfig(
            hidden_size=32, num_filters=4, codebook_dim=16, vector_quantization_hidden_dimension=16,
            num_quantizers=8, upsample_groups=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, intermediate_size=64, sliding_window=8,
        )
    raise ValueError(f"unknown Mimi size {size!r}; use one of {SIZES}")


@torch.no_grad()
def _randomize(model: MimiModel, gen: torch.Generator) -> None:
    """Re-draw the tensors that transformers' init makes trivial (see the module docstring)."""
    for name, t in model.named_buffers():
        if name.endswith("embed_sum"):
            t.copy_(torch.randn(t.shape, generator=gen))
        elif name.endswith("cluster_usage"):
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    for name, p in model.named_parameters():
        if name.endswith("layer_scale.scale"):
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.1)
        elif "layernorm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def _set_level(model: MimiModel, rms_dbfs: float, gen: torch.Generator, frames: int = 8) -> None:
    """Scale the decoder's last convolution (the waveform is linear in it) so random codes decode at `rms_dbfs`
    RMS: random weights otherwise decode to full-scale noise that clips (-1 dBFS RMS, most samples clipped)."""
    codes = torch.randint(0, model.config.codebook_size, (1, model.config.num_quantizers, frames), generator=gen)
    audio = model.decode(codes).audio_values
    gain = 10 ** (rms_dbfs / 20) / float(audio.pow(2).mean().sqrt())
    last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv1d)][-1]  # SEANet's output conv
    last.weight.mul_(gain)
    last.bias.mul_(gain)


def write_random_mimi(out_dir: str | Path, size: str = "tiny", seed: int = 0, rms_dbfs: float | None = None) -> Path:
    """Write a deterministic random-weight `MimiModel` folder (config.json + model.safetensors) and return it.
    `rms_dbfs`: the level random codes decode at (the demo's: audible, not loud); None keeps the raw weights."""
    config = random_mimi_config(size)
    torch.manual_seed(seed)
    model = MimiModel(config).eval()
    _randomize(model, torch.Generator().manual_seed(seed))
    if rms_dbfs is not None:
        _set_level(model, rms_dbfs, torch.Generator().manual_seed(seed))
    out = Path(out_dir)
    model.save_pretrained(out)
    return out
