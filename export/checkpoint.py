"""Load released MiniMind-O checkpoints strictly: the flat `.pth` and the transformers folder.

Upstream loads with `strict=False`, so a misnamed or missing tensor silently stays random; here every key must be
present with the right shape or loading fails with the list of offenders. The model config is inferred from tensor
shapes (so any size loads, TINY included) and, for a folder, cross-checked against config.json.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from omni_onnx.config import ModelConfig

from .modeling import OmniTorchModel, state_shapes

EMBED_KEY, TIED_KEY = "model.embed_tokens.weight", "lm_head.weight"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# config.json key -> ModelConfig field, for fields the tensor shapes cannot tell
_JSON_ONLY = {"rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
              "max_position_embeddings": "max_position_embeddings", "bos_token_id": "bos_token_id",
              "eos_token_id": "eos_token_id", "audio_pad_token": "audio_pad_code",
              "audio_stop_token": "audio_stop_code", "audio_spk_token": "audio_spk_code",
              "image_token_len": "image_token_len"}
_MAX_LISTED = 12


def load_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a `.pth`/`.bin`/`.safetensors` file or a transformers folder -> (config, complete fp32 state dict).

    Raises ValueError for an unreadable or foreign file, missing/unexpected/misshaped keys, untied embeddings, or a
    config.json that disagrees with the tensors.
    """
    path = Path(path)
    if path.is_dir():
        sd, meta = _read_folder(path), _read_json(path / "config.json")
    elif path.is_file():
        sd, meta = _read_file(path), None
    else:
        raise ValueError(f"checkpoint {path} does not exist; pass a .pth file or a transformers folder")
    sd = _untie(sd, path)
    cfg = infer_config({k: tuple(v.shape) for k, v in sd.items()}, path)
    if meta is not None:
        cfg = _merge_json(cfg, meta, path)
    _check_keys(sd, cfg, path)
    return cfg, {k: v.float() for k, v in sd.items()}


def load_model(path: str | Path) -> OmniTorchModel:
    """The checkpoint as an fp32 OmniTorchModel in eval mode (weights loaded strictly)."""
    cfg, sd = load_checkpoint(path)
    model = OmniTorchModel(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why torch/safetensors could not read `path`, as one complete phrase: their own messages run over many lines
    (torch's weights-only notice alone is a paragraph) and name internals such as `pop from empty list`."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(error, EOFError) or "central directory" in str(error):
        return "the file is truncated"
    return "it is not a torch or safetensors file, or it is damaged"


def torch_load(path: Path, what: str, fix: str) -> Any:
    """torch.load (weights only; safetensors for `.safetensors`), or one ValueError line: what, why, and the fix."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for a foreign or truncated file
        raise ValueError(f"cannot read {what} {path}: {unreadable_reason(path, e)}; {fix}") from None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    obj = torch_load(path, "checkpoint", "pass upstream's sft_omni_*.pth or a transformers folder")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a flat state dict {{name: tensor}} (got {type(obj).__name__}); "
                         f"pass upstream's sft_omni_*.pth, not a training/resume checkpoint")
    return obj


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json; a transformers checkpoint folder needs config.json and weights")
    for name in HF_WEIGHTS:
        f = folder / name
        if not f.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_file(f)
        shards = sorted(set(_read_json(f).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{f} has no weight_map; the index file is damaged")
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (folder / shard).is_file():
                raise ValueError(f"{f} names shard {shard}, which is missing from {folder}")
            sd.update(_read_file(folder / shard))
        return sd
    raise ValueError(f"{folder} holds none of {', '.join(HF_WEIGHTS)}; download the weights into it")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _untie(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Both tied keys present and equal (transformers drops `lm_head.weight`; restore it)."""
    sd = dict(sd)
    if EMBED_KEY in sd and TIED_KEY not in sd:
        sd[TIED_KEY] = sd[EMBED_KEY]
    elif TIED_KEY in sd and EMBED_KEY not in sd:
        sd[EMBED_KEY] = sd[TIED_KEY]
    elif TIED_KEY in sd and not torch.equal(sd[TIED_KEY], sd[EMBED_KEY]):
        raise ValueError(f"{path}: lm_head.weight differs from model.embed_tokens.weight, but MiniMind-O ties them; "
                         f"this is not a MiniMind-O checkpoint")
    return sd


def _count(shapes: dict[str, tuple[int, ...]], prefix: str, default: int) -> int:
    """Highest `prefix<N>.` index + 1, so a gap shows up as missing keys (a missing *last* layer is caught only by
    config.json)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in shapes if (m := pat.match(k))]
    return max(found) + 1 if found else default


def _size(shapes: dict[str, tuple[int, ...]], candidates: list[tuple[str, int]], default: int) -> int:
    """Size from the first present (key pattern, axis); `*` is any layer/expert index. Several candidates per
    dimension, so one missing tensor is reported as missing instead of making its whole module misshaped."""
    for pattern, axis in candidates:
        rx = re.compile(re.escape(pattern).replace(r"\*", r"\d+") + "$")
        for key in sorted(shapes):
            if rx.match(key) and len(shapes[key]) > axis:
                return shapes[key][axis]
    return default


def infer_config(shapes: dict[str, tuple[int, ...]], source: str | Path = "checkpoint") -> ModelConfig:
    """ModelConfig from tensor shapes and key counts; ids and RoPE settings keep upstream's defaults.

    Missing tensors fall back to other tensors of the same size (or the FULL value), so that the key check
    afterwards lists exactly the missing keys.
    """
    if EMBED_KEY not in shapes:
        raise ValueError(f"{source} is not a MiniMind-O checkpoint: it has no {EMBED_KEY!r} "
                         f"({len(shapes)} tensors, e.g. {sorted(shapes)[:3]})")
    d = ModelConfig()
    vocab, hidden = shapes[EMBED_KEY]

    def stack(p: str, head_dim: int, intermediate: int, heads: int, kv_heads: int) -> dict[str, int]:
        """Attention/FFN sizes of the block stack under prefix p; the arguments are the FULL defaults."""
        attn, mlp = p + "*.self_attn.", p + "*.mlp."
        hd = _size(shapes, [(attn + "q_norm.weight", 0), (attn + "k_norm.weight", 0)], head_dim)
        ffn = [(f"{mlp}{e}{n}_proj.weight", ax)
               for e in ("", "experts.*.") for n, ax in (("gate", 0), ("up", 0), ("down", 1))]
        return {"head_dim": hd, "intermediate": _size(shapes, ffn, intermediate),
                "heads": _size(shapes, [(attn + "q_proj.weight", 0), (attn + "o_proj.weight", 1)], hd * heads) // hd,
                "kv_heads": _size(shapes, [(attn + "k_proj.weight", 0), (attn + "v_proj.weight", 0)],
                                  hd * kv_heads) // hd}

    th = stack("model.layers.", d.head_dim, d.intermediate_size, d.num_attention_heads, d.num_key_value_heads)
    tk = stack("talker.layers.", d.talker_head_dim, d.talker_intermediate_size, d.talker_num_attention_heads,
               d.talker_num_key_value_heads)
    emb, head = "talker.embed_tokens.", "talker.lm_head."
    return ModelConfig(
        hidden_size=hidden, vocab_size=vocab, head_dim=th["head_dim"], intermediate_size=th["intermediate"],
        num_attention_heads=th["heads"], num_key_value_heads=th["kv_heads"],
        num_hidden_layers=_count(shapes, "model.layers.", d.num_hidden_layers),
        use_moe=any(".mlp.experts." in k for k in shapes),
        num_experts=_size(shapes, [("model.layers.*.mlp.gate.weight", 0), ("talker.layers.*.mlp.gate.weight", 0)],
                          d.num_experts),
        num_talker_hidden_layers=_count(shapes, "talker.layers.", d.num_talker_hidden_layers),
        talker_hidden_size=_size(shapes, [("talker.norm.weight", 0), (emb + "base.weight", 1),
                                          (head + "base.weight", 1), ("talker.spk_proj.weight", 0)],
                                 d.talker_hidden_size),
        talker_head_dim=tk["head_dim"], talker_intermediate_size=tk["intermediate"],
        talker_num_attention_heads=tk["heads"], talker_num_key_value_heads=tk["kv_heads"],
        adapter_rank=_size(shapes, [(emb + "adapters.*.0.weight", 1), (head + "adapters.*.0.weight", 0)],
                           d.adapter_rank),
        audio_vocab_size=_size(shapes, [(emb + "base.weight", 0), (head + "base.weight", 0)], d.audio_vocab_size),
        num_codebooks=max(_count(shapes, emb + "adapters.", 0), _count(shapes, head + "adapters.", 0))
        or d.num_codebooks,
        spk_emb_size=_size(shapes, [("talker.spk_proj.weight", 1)], d.spk_emb_size),
        audio_hidden_size=_size(shapes, [("audio_proj.mlp.0.weight", 0), ("audio_proj.mlp.1.weight", 1)],
                                d.audio_hidden_size),
        image_hidden_size=_size(shapes, [("vision_proj.mlp.0.weight", 0), ("vision_proj.mlp.1.weight", 1)],
                                d.image_hidden_size),
    )


def _merge_json(cfg: ModelConfig, meta: dict[str, Any], folder: Path) -> ModelConfig:
    """Take the json-only fields from config.json; every field the tensors also tell must agree."""
    expect = {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
              "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
              "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size, "use_moe": cfg.use_moe,
              "num_talker_hidden_layers": cfg.num_talker_hidden_layers, "talker_hidden_size": cfg.talker_hidden_size,
              "audio_hidden_size": cfg.audio_hidden_size, "image_hidden_size": cfg.image_hidden_size,
              "audio_vocab_size": cfg.audio_vocab_size, "spk_emb_size": cfg.spk_emb_size,
              "bridge_layer": cfg.bridge_layer, "tie_word_embeddings": True, "inference_rope_scaling": False,
              "num_experts_per_tok": 1, "hidden_act": "silu",
              "moe_intermediate_size" if cfg.use_moe else "intermediate_size": cfg.intermediate_size}
    if cfg.use_moe:
        expect["num_experts"] = cfg.num_experts
    bad = [f"{k}: config.json {meta[k]!r}, tensors {v!r}" for k, v in expect.items() if k in meta and meta[k] != v]
    if meta.get("rope_scaling"):
        bad.append(f"rope_scaling: config.json {meta['rope_scaling']!r}; YaRN is not supported "
                   f"(upstream never enables it)")
    if bad:
        raise ValueError(f"{folder}/config.json disagrees with the weights:\n- " + "\n- ".join(bad))
    upd = {field: meta[key] for key, field in _JSON_ONLY.items() if key in meta}
    for key, field in (("audio_ids", "audio_token_id"), ("image_ids", "image_token_id")):
        if meta.get(key):
            upd[field] = meta[key][0]
    if "think_end_ids" in meta:
        upd["think_end_ids"] = tuple(meta["think_end_ids"])
    return dataclasses.replace(cfg, **upd)


def _check_keys(sd: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> None:
    want = state_shapes(cfg)
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    misshaped = sorted(f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in set(want) & set(sd)
                       if tuple(sd[k].shape) != want[k])
    lines = [f"{len(keys)} {what}: " + ", ".join(keys[:_MAX_LISTED]) + (" ..." if len(keys) > _MAX_LISTED else "")
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)) if keys]
    if lines:
        raise ValueError(f"{source} is not a complete MiniMind-O checkpoint ({'MoE' if cfg.use_moe else 'dense'}, "
                         f"{cfg.num_hidden_layers}+{cfg.num_talker_hidden_layers} layers):\n- " + "\n- ".join(lines))
