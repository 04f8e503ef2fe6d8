"""Thinker graph: token ids (+ injected features) and the KV cache -> last-position logits, bridge states, new KV.

One graph serves prefill (seq = prompt, past_seq >= 0) and decode (seq = 1). Only the last position's logits are
computed (the full-vocab projection for every prompt position would be wasted work), and `present_*` holds only the
new positions' K/V so the runtime can write them into its preallocated cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omni_onnx.config import ModelConfig
from omni_onnx.contracts import thinker_spec

from .common import (export_graph, flatten_kv, kv_pairs, past_from_feeds, present_outputs, random_past,
                     verify_shapes)
from .empty_past import guard_empty_past
from .modeling import OmniTorchModel

FILENAME = "thinker.onnx"
VERIFY_CASES = ((6, 0), (1, 0), (1, 9), (4, 5))  # (seq, past_seq): prefill, 1-token prompt, decode, chunked prefill


class ThinkerGraph(nn.Module):
    """Wrapper with the thinker_spec signature: positional inputs and outputs in contract order."""

    def __init__(self, model: OmniTorchModel):
        super().__init__()
        self.model = model
        self.register_buffer("zero_bias", torch.zeros(model.cfg.vocab_size), persistent=False)

    def forward(self, input_ids: Tensor, feature_embeds: Tensor, feature_mask: Tensor, *past: Tensor) -> tuple:
        h, bridge, new = self.model.thinker_hidden(input_ids, kv_pairs(past), feature_embeds, feature_mask)
        # With a bias, the exporter emits Gemm(transB=1) on the embedding table itself; the bias-free lm_head would
        # be stored a second time, transposed (+20 MB at full size).
        logits = F.linear(self.model.model.norm(h[:, -1]), self.model.lm_head.weight, self.zero_bias)  # [1, vocab]
        return (logits, bridge, *flatten_kv(new))


def dummy_inputs(cfg: ModelConfig, seq: int = 3, past_seq: int = 2, seed: int = 0) -> dict[str, Tensor]:
    """Random inputs in contract order: some positions carry features, the rest are tokens."""
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, cfg.vocab_size, (1, seq), generator=g),
        "feature_embeds": torch.randn(1, seq, cfg.hidden_size, generator=g) * 0.02,
        "feature_mask": torch.rand(1, seq, generator=g) < 0.5,
        **random_past(thinker_spec(cfg), past_seq, g),
    }


def reference_outputs(model: OmniTorchModel, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
    """The contract's outputs computed with the module's public API (independent of the wrapper's slicing)."""
    past = past_from_feeds(thinker_spec(model.cfg), feeds)
    with torch.no_grad():
        logits, bridge, presents = model.thinker_forward(feeds["input_ids"], past, feeds["feature_embeds"],
                                                         feeds["feature_mask"])
    return {"logits": logits[:, -1], "bridge": bridge, **present_outputs(presents, past)}


def export(model: OmniTorchModel, out_dir: str | Path) -> Path:
    """Write `out_dir/thinker.onnx` (single file, weights inside), its cache matmuls guarded against the first call's
    empty cache (empty_past.py)."""
    path = export_graph(ThinkerGraph(model), dummy_inputs(model.cfg), thinker_spec(model.cfg), Path(out_dir) / FILENAME)
    guard_empty_past(path)
    return path


def verify(model: OmniTorchModel, path: str | Path,
           cases: Sequence[tuple[int, int]] = VERIFY_CASES) -> dict[str, dict[str, float]]:
    """Parity of the graph at `path` against the module for each (seq, past_seq); raises ParityError."""
    return verify_shapes(path, thinker_spec(model.cfg), partial(dummy_inputs, model.cfg),
                         partial(reference_outputs, model), cases)
