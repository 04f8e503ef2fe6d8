"""Random checkpoints in the released on-disk formats, for tests and benchmarks (no weights can be downloaded).

Keys, shapes, dtypes and file layout follow the released artefacts (reference spec section 1): the flat fp16 `.pth`,
the transformers folder (bf16 `pytorch_model.bin`, tied `lm_head.weight` left out), and the speaker `voices.pt`.
Values are random but sane, so parity checks exercise real numerics: Linear/Embedding weights N(0, 0.02), norm
weights near 1, biases near 0, the Talker's text/audio scales near upstream's init 3.0/1.0.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from omni_onnx.config import FULL, ModelConfig

from .modeling import state_shapes

ASSETS = Path(__file__).parent / "assets" / "minimind-o"
TIED_KEY, EMBED_KEY = "lm_head.weight", "model.embed_tokens.weight"
MIMI_CODEBOOKS = 32  # a released ref_codes tensor views the first 8 rows of a full Mimi code storage


def random_state_dict(cfg: ModelConfig = FULL, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 state dict with every checkpoint key; the tied lm_head holds the embedding's values."""
    g = torch.Generator().manual_seed(seed)
    scales = {"talker.text_scale": 3.0, "talker.audio_scale": 1.0}
    sd: dict[str, torch.Tensor] = {}
    for key, shape in state_shapes(cfg).items():
        if key == TIED_KEY:
            continue
        if key in scales:
            v = scales[key] + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and key.endswith(".weight"):  # every 1-D weight is a norm gain
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            v = 0.02 * torch.randn(shape, generator=g)
        sd[key] = v
    sd[TIED_KEY] = sd[EMBED_KEY]
    return sd


def write_random_pth(path: str | Path, cfg: ModelConfig = FULL, seed: int = 0) -> Path:
    """Flat fp16 `{key: tensor}` like `sft_omni_768{_moe}.pth`: both tied keys, no RoPE buffers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in random_state_dict(cfg, seed).items()}, path)
    return path


def hf_config(cfg: ModelConfig) -> dict:
    """config.json of upstream's transformers export (OmniConfig fields) for `cfg`."""
    return {
        "architectures": ["MiniMindOmni"],
        "auto_map": {"AutoConfig": "model_omni.OmniConfig", "AutoModelForCausalLM": "model_omni.MiniMindOmni"},
        "model_type": "minimind-o",
        "dtype": "bfloat16",
        "tie_word_embeddings": True,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "inference_rope_scaling": False,
        "max_position_embeddings": cfg.max_position_embeddings,
        "dropout": 0.0,
        "flash_attn": True,
        "use_moe": cfg.use_moe,
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": 1,
        "norm_topk_prob": True,
        "router_aux_loss_coef": 0.0005,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "num_talker_hidden_layers": cfg.num_talker_hidden_layers,
        "talker_hidden_size": cfg.talker_hidden_size,
        "audio_ids": [cfg.audio_token_id],
        "audio_special_token": "<|audio_pad|>",
        "audio_hidden_size": cfg.audio_hidden_size,
        "audio_vocab_size": cfg.audio_vocab_size,
        "audio_pad_token": cfg.audio_pad_code,
        "audio_stop_token": cfg.audio_stop_code,
        "audio_spk_token": cfg.audio_spk_code,
        "spk_emb_size": cfg.spk_emb_size,
        "think_end_ids": list(cfg.think_end_ids),
        "image_ids": [cfg.image_token_id],
        "image_special_token": "<|image_pad|>",
        "image_hidden_size": cfg.image_hidden_size,
        "image_token_len": cfg.image_token_len,
        "bridge_layer": cfg.bridge_layer,
    }


def write_random_hf_folder(folder: str | Path, cfg: ModelConfig = FULL, seed: int = 0,
                           state: dict[str, torch.Tensor] | None = None) -> Path:
    """Transformers layout: config.json, bf16 `pytorch_model.bin` (tied lm_head.weight dropped, as
    `save_pretrained` does), and the tokenizer files from the package data. `state`: other weights for `cfg` to
    write in that layout (default: `random_state_dict(cfg, seed)`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = random_state_dict(cfg, seed) if state is None else state
    sd = {k: v.to(torch.bfloat16) for k, v in state.items() if k != TIED_KEY}
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(ASSETS / name, folder / name)
    return folder


def write_random_voices(path: str | Path, names: Sequence[str] = ("alice", "bob"), frames: int | Sequence[int] = 80,
                        seed: int = 0, codebook_size: int = 2048, spk_emb_size: int = 192) -> Path:
    """A `voices.pt` like the released one: `{name: {"ref_codes": int64 [8, F], "spk_emb": float32 [192]}}`.

    Each ref_codes is the first-8-rows view of a [32, F] storage (the released quirk); spk_emb has the L2 norm of a
    raw CAM++ vector (about 13).
    """
    frames = [frames] * len(names) if isinstance(frames, int) else list(frames)
    if len(frames) != len(names):
        raise ValueError(f"got {len(frames)} frame counts for {len(names)} voices; give one int or one per name")
    g = torch.Generator().manual_seed(seed)
    voices = {}
    for name, f in zip(names, frames):
        full = torch.randint(0, codebook_size, (MIMI_CODEBOOKS, f), generator=g, dtype=torch.int64)
        emb = torch.randn(spk_emb_size, generator=g)
        voices[name] = {"ref_codes": full[:8], "spk_emb": emb * (13.0 / emb.norm())}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(voices, path)
    return path
