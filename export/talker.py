"""Talker graph: bridge states + 8-codebook code columns and its KV cache -> last-position codebook logits, new KV.

One graph serves prefill and decode; only the last position's 8 x audio_vocab logits are computed, and `present_*`
holds only the new positions' K/V. The runtime decides `spk_mask` (upstream: codebook-0 id == spk code, only when a
speaker embedding is given) and feeds zeros for `spk_emb` when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from omni_onnx.config import ModelConfig
from omni_onnx.contracts import talker_spec

from .common import (export_graph, flatten_kv, kv_pairs, past_from_feeds, present_outputs, random_past,
                     verify_shapes)
from .empty_past import guard_empty_past
from .modeling import OmniTorchModel

FILENAME = "talker.onnx"
VERIFY_CASES = ((6, 0), (1, 0), (1, 9), (4, 5))  # (seq, past_seq)


class TalkerGraph(nn.Module):
    """Wrapper with the talker_spec signature: positional inputs and outputs in contract order."""

    def __init__(self, model: OmniTorchModel):
        super().__init__()
        self.model = model

    def forward(self, bridge: Tensor, codes: Tensor, spk_mask: Tensor, spk_emb: Tensor, *past: Tensor) -> tuple:
        h, new = self.model.talker_hidden(bridge, codes, kv_pairs(past), spk_emb, spk_mask)
        logits = self.model.talker_logits(h[:, -1:])[:, :, 0]  # [1, codebooks, audio_vocab]
        return (logits, *flatten_kv(new))


def dummy_inputs(cfg: ModelConfig, seq: int = 3, past_seq: int = 2, seed: int = 0) -> dict[str, Tensor]:
    """Random inputs in contract order; codes span the whole audio vocab (pad/stop/spk included)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, cfg.spk_emb_size, generator=g)
    return {
        "bridge": torch.randn(1, seq, cfg.hidden_size, generator=g),
        "codes": torch.randint(0, cfg.audio_vocab_size, (1, cfg.num_codebooks, seq), generator=g),
        "spk_mask": torch.rand(1, seq, generator=g) < 0.5,
        "spk_emb": emb * (13.0 / emb.norm()),  # a raw CAM++ vector's norm
        **random_past(talker_spec(cfg), past_seq, g),
    }


def reference_outputs(model: OmniTorchModel, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
    """The contract's outputs computed with the module's public API (independent of the wrapper's slicing)."""
    past = past_from_feeds(talker_spec(model.cfg), feeds)
    with torch.no_grad():
        logits, presents = model.talker_forward(feeds["bridge"], feeds["codes"], past, feeds["spk_emb"],
                                                feeds["spk_mask"])
    return {"audio_logits": logits[:, :, -1], **present_outputs(presents, past)}


def export(model: OmniTorchModel, out_dir: str | Path) -> Path:
    """Write `out_dir/talker.onnx` (single file, weights inside), its cache matmuls guarded against the first call's
    empty cache (empty_past.py)."""
    path = export_graph(TalkerGraph(model), dummy_inputs(model.cfg), talker_spec(model.cfg), Path(out_dir) / FILENAME)
    guard_empty_past(path)
    return path


def verify(model: OmniTorchModel, path: str | Path,
           cases: Sequence[tuple[int, int]] = VERIFY_CASES) -> dict[str, dict[str, float]]:
    """Parity of the graph at `path` against the module for each (seq, past_seq); raises ParityError."""
    return verify_shapes(path, talker_spec(model.cfg), partial(dummy_inputs, model.cfg),
                         partial(reference_outputs, model), cases)
