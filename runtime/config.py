"""Model dimensions and special ids, shared by export (to build graphs) and runtime (to drive them).

The values are upstream's `OmniConfig` defaults (see the reference spec, section 2); a tiny variant with the
same structure serves the tests. A bundle stores its `ModelConfig` in `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 96
    intermediate_size: int = 2432
    vocab_size: int = 6400
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    use_moe: bool = False
    num_experts: int = 4
    # Talker
    num_talker_hidden_layers: int = 4
    talker_hidden_size: int = 768
    talker_intermediate_size: int = 2432
    talker_num_attention_heads: int = 8
    talker_num_key_value_heads: int = 4
    talker_head_dim: int = 96
    adapter_rank: int = 256
    audio_vocab_size: int = 2112
    num_codebooks: int = 8
    spk_emb_size: int = 192
    # Projectors (speech / image in)
    audio_hidden_size: int = 512
    image_hidden_size: int = 768
    image_token_len: int = 64
    # Special ids
    bos_token_id: int = 1
    eos_token_id: int = 2
    audio_token_id: int = 16
    image_token_id: int = 12
    audio_pad_code: int = 2049
    audio_stop_code: int = 2050
    audio_spk_code: int = 2051
    codebook_size: int = 2048
    enter_token_id: int = 201
    text_pad_token_id: int = 0
    think_end_ids: tuple[int, ...] = (26, 234, 234)

    @property
    def bridge_layer(self) -> int:
        """Index of the Thinker layer whose un-normed output the Talker reads (upstream: layers // 2 - 1)."""
        return self.num_hidden_layers // 2 - 1

    @property
    def num_cache_layers(self) -> int:
        return self.num_hidden_layers + self.num_talker_hidden_layers

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["think_end_ids"] = list(self.think_end_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; this bundle was written by another version")
        d = dict(d)
        if "think_end_ids" in d:
            d["think_end_ids"] = tuple(d["think_end_ids"])
        return cls(**d)


def upstream_intermediate_size(hidden_size: int) -> int:
    """Upstream's FFN width: ceil(hidden * pi / 64) * 64 (2432 for 768)."""
    return math.ceil(hidden_size * math.pi / 64) * 64


FULL = ModelConfig()

# Same structure as FULL, small enough for CI: every code path (GQA x2, bridge layer, 8 codebooks, MoE) is kept.
TINY = ModelConfig(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    num_talker_hidden_layers=2,
    talker_hidden_size=64,
    talker_intermediate_size=128,
    talker_num_attention_heads=4,
    talker_num_key_value_heads=2,
    talker_head_dim=16,
    adapter_rank=16,
    audio_hidden_size=32,
    image_hidden_size=48,
)
