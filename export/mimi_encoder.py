"""Export the Mimi encoder for voice cloning: a whole 24 kHz clip -> the first 8 RVQ codes per 12.5 Hz frame.

transformers' `MimiModel.encode` does not trace to ONNX as is (its attention-mask builder uses `aten::diff`), so
`MimiEncodeClip` calls the same submodules and weights with an explicit mask:

    audio [1,1,N] -> SEANet encoder (causal convs; the last frame zero-padded to a whole stride, as transformers
      pads it) -> encoder transformer (causal attention limited to the sliding window, built here)
      -> downsample conv (25 Hz -> 12.5 Hz) -> split RVQ: semantic codebook 0, acoustic codebooks 1..7, each the
      nearest codeword (squared Euclidean distance) of the residual -> codes [1,8,ceil(N/1920)]

Whole-clip only: cloning references are at most a few seconds, so no streaming state is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from transformers import MimiModel

from omni_onnx.contracts import mimi_encoder_spec

from .common import OPSET, export_graph, verify_graph
from .mimi_decoder import NUM_CODEBOOKS

FRAME_SAMPLES = 1920


def check_encoder(mimi: MimiModel) -> None:
    """Raise ValueError when the folder has no usable encoder (e.g. a decoder-only checkpoint)."""
    c = mimi.config
    if mimi.encoder is None or mimi.encoder.downsample is None:
        raise ValueError("this Mimi model has no encoder with a downsampling layer; cloning needs the full "
                         "kyutai/mimi checkpoint (encoder included)")
    if c.num_semantic_quantizers != 1 or c.num_quantizers < NUM_CODEBOOKS:
        raise ValueError(f"need 1 semantic + >= {NUM_CODEBOOKS - 1} acoustic quantizers, got "
                         f"{c.num_semantic_quantizers} + {c.num_quantizers - c.num_semantic_quantizers}")
    if c.num_key_value_heads != c.num_attention_heads:
        raise ValueError("grouped-query attention in the encoder transformer is not supported")


def _nearest(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[T, D] vectors, [K, D] codewords -> [T] index of the nearest codeword. ||x||^2 - 2 x.c + ||c||^2, the
    expansion torch.cdist uses for these sizes, so near-ties break the same way."""
    d2 = (residual * residual).sum(-1, keepdim=True) - 2 * residual @ codebook.T + (codebook * codebook).sum(-1)
    return d2.clamp_min(0).sqrt().argmin(-1)


class MimiEncodeClip(nn.Module):
    """audio [1, 1, N] -> codes [1, 8, ceil(N / 1920)] int64, as `MimiModel.encode(audio).audio_codes[:, :8]`."""

    def __init__(self, mimi: MimiModel):
        super().__init__()
        check_encoder(mimi)
        enc = mimi.encoder
        self.seanet, self.transformer, self.downsample = enc.encoder_seanet, enc.encoder_transformer, enc.downsample
        self.window = mimi.config.sliding_window
        q = mimi.quantizer
        semantic, acoustic = q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer
        self.projs = nn.ModuleList([rvq.input_proj or nn.Identity() for rvq in (semantic, acoustic)])
        self.books = nn.ModuleList([nn.ModuleList([semantic.layers[0].codebook]),
                                    nn.ModuleList([layer.codebook for layer in acoustic.layers[:NUM_CODEBOOKS - 1]])])

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.seanet(audio).transpose(1, 2)  # [1, T25, H]
        steps = x.shape[1]
        pos = torch.arange(steps)
        visible = (pos[None] <= pos[:, None]) & (pos[None] > pos[:, None] - self.window)
        mask = torch.where(visible, 0.0, torch.finfo(x.dtype).min)[None, None]
        cos_sin = self.transformer.rotary_emb(x, pos[None])
        for layer in self.transformer.layers:
            x = layer(x, attention_mask=mask, position_embeddings=cos_sin)
        latents = self.downsample(x.transpose(1, 2))  # [1, H, F]
        codes = []
        for proj, books in zip(self.projs, self.books):
            residual = proj(latents)[0].T  # [F, D]
            for book in books:
                idx = _nearest(residual, book.embed)
                residual = residual - book.embed[idx]
                codes.append(idx)
        return torch.stack(codes)[None]


def _example(samples: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"audio": 0.1 * torch.randn(1, 1, samples, generator=gen)}


def export(mimi: MimiModel, out_path: str | Path) -> Path:
    """Write the `mimi_encoder` graph (fp32, opset 17, any clip length)."""
    spec = mimi_encoder_spec(NUM_CODEBOOKS)
    out = export_graph(MimiEncodeClip(mimi).eval(), _example(3 * FRAME_SAMPLES + 777, 0), spec, out_path)
    m = onnx.load(str(out))
    onnx.helper.set_model_props(m, {"graph": spec.graph, "contract_version": str(spec.version),
                                    "opset": str(OPSET), "precision": "fp32"})
    onnx.save(m, str(out))
    return out


def reference_codes(mimi: MimiModel, audio: np.ndarray) -> np.ndarray:
    """What upstream's web demo keeps: `MimiModel.encode(...).audio_codes[:, :8]`, int64 [1, 8, F]."""
    with torch.no_grad():
        return mimi.encode(torch.from_numpy(audio)).audio_codes[:, :NUM_CODEBOOKS].numpy()


def verify(mimi: MimiModel, onnx_path: str | Path,
           lengths: tuple[int, ...] = (FRAME_SAMPLES, 5 * FRAME_SAMPLES + 1, 24000 * 4 + 17)) -> dict[str, float]:
    """Codes from the graph must equal transformers' own `encode` exactly, for whole and partial last frames."""
    cases = []
    for n, samples in enumerate(lengths):
        feeds = _example(samples, 20 + n)
        cases.append((f"samples={samples}", feeds, {"codes": reference_codes(mimi, feeds["audio"].numpy())}))
    diffs = verify_graph(onnx_path, mimi_encoder_spec(NUM_CODEBOOKS), cases)
    return {"codes": max(d["codes"] for d in diffs.values())}
