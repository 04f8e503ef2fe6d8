"""Checkpoint loaders and random checkpoint writers: release formats round-trip, and bad files fail loudly."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from omni_onnx.config import TINY
from omni_onnx.export.checkpoint import EMBED_KEY, infer_config, load_checkpoint, load_model
from omni_onnx.export.modeling import OmniTorchModel, state_shapes
from omni_onnx.export.random_checkpoint import (
    ASSETS,
    random_state_dict,
    write_random_hf_folder,
    write_random_pth,
    write_random_voices,
)

TINY_MOE = dataclasses.replace(TINY, use_moe=True)


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> Path:
    return write_random_pth(tmp_path_factory.mktemp("ck") / "sft_omni_64.pth", TINY, seed=1)


@pytest.fixture
def tiny_sd(tiny_pth) -> dict[str, torch.Tensor]:
    return torch.load(tiny_pth, weights_only=True)


def _save(sd, path: Path) -> Path:
    torch.save(sd, path)
    return path


def test_pth_round_trip(tiny_pth, tiny_sd):
    assert {v.dtype for v in tiny_sd.values()} == {torch.float16}
    assert set(tiny_sd) == set(state_shapes(TINY))  # both tied keys, no RoPE buffers
    cfg, sd = load_checkpoint(tiny_pth)
    assert cfg == TINY
    ref = random_state_dict(TINY, seed=1)
    assert set(sd) == set(ref)
    for k, v in sd.items():
        assert v.dtype == torch.float32
        assert torch.equal(v, ref[k].half().float()), k


def test_moe_is_detected_from_keys(tmp_path):
    cfg, sd = load_checkpoint(write_random_pth(tmp_path / "sft_omni_64_moe.pth", TINY_MOE))
    assert cfg == TINY_MOE and cfg.use_moe and cfg.num_experts == 4
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" in sd


def test_hf_folder_round_trip(tmp_path):
    folder = write_random_hf_folder(tmp_path / "minimind-3o", TINY, seed=2)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["architectures"] == ["MiniMindOmni"] and meta["model_type"] == "minimind-o"
    assert meta["tie_word_embeddings"] is True and meta["dtype"] == "bfloat16" and "auto_map" in meta
    assert (folder / "tokenizer.json").read_bytes() == (ASSETS / "tokenizer.json").read_bytes()
    raw = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert {v.dtype for v in raw.values()} == {torch.bfloat16} and "lm_head.weight" not in raw
    cfg, sd = load_checkpoint(folder)
    assert cfg == TINY
    ref = random_state_dict(TINY, seed=2)
    for k, v in sd.items():
        assert torch.equal(v, ref[k].to(torch.bfloat16).float()), k
    assert torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])


def test_sharded_safetensors_folder(tmp_path, tiny_sd):
    folder = tmp_path / "sharded"
    folder.mkdir()
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in tiny_sd.items() if k != "lm_head.weight"}
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: sd[k] for k in part}, folder / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copyfile(ASSETS / "tokenizer.json", folder / "tokenizer.json")
    (folder / "config.json").write_text(json.dumps({"hidden_size": TINY.hidden_size, "rope_theta": 5e5,
                                                    "audio_ids": [17], "think_end_ids": [1, 2]}))
    cfg, loaded = load_checkpoint(folder)
    assert cfg == dataclasses.replace(TINY, rope_theta=5e5, audio_token_id=17, think_end_ids=(1, 2))
    assert set(loaded) == set(tiny_sd)


def test_config_json_must_agree_with_weights(tmp_path):
    folder = write_random_hf_folder(tmp_path / "hf", TINY)
    meta = json.loads((folder / "config.json").read_text())
    meta |= {"num_hidden_layers": 3, "use_moe": True}
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"num_hidden_layers: config.json 3, tensors 2") as e:
        load_checkpoint(folder)
    assert "use_moe: config.json True, tensors False" in str(e.value)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    del sd["talker.layers.1.mlp.up_proj.weight"], sd["model.layers.0.self_attn.k_norm.weight"]
    sd["model.extra.weight"] = torch.zeros(3)
    sd["vision_proj.mlp.3.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as e:
        load_checkpoint(_save(sd, tmp_path / "partial.pth"))
    msg = str(e.value)
    assert "2 missing: model.layers.0.self_attn.k_norm.weight, talker.layers.1.mlp.up_proj.weight" in msg
    assert "1 unexpected: model.extra.weight" in msg
    assert "vision_proj.mlp.3.bias (7,) (expected (64,))" in msg


@pytest.mark.parametrize("cfg", [TINY, TINY_MOE], ids=["dense", "moe"])
def test_any_single_missing_key_keeps_the_inferred_config(cfg):
    """So a partial checkpoint is reported as exactly its missing keys, never as a cascade of misshaped ones."""
    shapes = state_shapes(cfg)
    wrong = [k for k in shapes if k != EMBED_KEY and infer_config({o: s for o, s in shapes.items() if o != k}) != cfg]
    assert wrong == []


def test_whole_talker_missing_lists_its_keys(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("talker.")}
    with pytest.raises(ValueError, match=r"\d+ missing: talker\.audio_scale, talker\.codec_proj"):
        load_checkpoint(_save(sd, tmp_path / "thinker_only.pth"))


def test_untied_embedding_is_rejected(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        load_checkpoint(_save(sd, tmp_path / "untied.pth"))


@pytest.mark.parametrize("content", [b"not a checkpoint", None], ids=["garbage", "foreign-dict"])
def test_unknown_files_are_rejected(tmp_path, content):
    path = tmp_path / "x.pth"
    if content is None:
        torch.save({"encoder.weight": torch.zeros(2)}, path)
        pattern = "not a MiniMind-O checkpoint"
    else:
        path.write_bytes(content)
        pattern = "cannot read checkpoint .*: it is not a torch or safetensors file"
    with pytest.raises(ValueError, match=pattern):
        load_checkpoint(path)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds none of"):
        load_checkpoint(tmp_path)


def test_load_model_is_strict_fp32_eval(tiny_pth, tiny_sd):
    model = load_model(tiny_pth)
    assert isinstance(model, OmniTorchModel) and not model.training
    w = model.talker.lm_head.adapters[3][2].weight
    assert w.dtype == torch.float32 and torch.equal(w, tiny_sd["talker.lm_head.adapters.3.2.weight"].float())
    assert model.lm_head.weight is model.model.embed_tokens.weight


def _describe(voices):
    """Structure of a voices file: per voice, tensor dtypes/shapes, storage size ratio and view layout."""
    out = set()
    for v in voices.values():
        codes, emb = v["ref_codes"], v["spk_emb"]
        f = codes.shape[1]
        out.add((tuple(sorted(v)), codes.dtype, codes.shape[0], codes.untyped_storage().nbytes() // (8 * f),
                         codes.stride() == (f, 1), codes.storage_offset(), emb.dtype, tuple(emb.shape)))
    return out


# The released voices.pt / voices_unseen.pt, inspected (reference spec section 1): int64 codes viewing the first 8
# rows of a 32-row storage at offset 0, and a float32 [192] embedding.
RELEASED_STRUCTURE = {(("ref_codes", "spk_emb"), torch.int64, 8, 32, True, 0, torch.float32, (192,))}


def test_random_voices_match_released_structure(tmp_path):
    from omni_onnx.export.voices import RELEASED_VOICES, read_voices_pt
    from omni_onnx.voices import Voice
    path = write_random_voices(tmp_path / "voices.pt", ["a", "b", "c"], frames=[70, 85, 101], seed=3)
    ours = torch.load(path, weights_only=True)
    assert list(ours) == ["a", "b", "c"]
    assert _describe(ours) == RELEASED_STRUCTURE
    read = {v.name: v for v in read_voices_pt(path)}
    assert all((read[k].ref_codes == v["ref_codes"].numpy()).all() for k, v in ours.items())
    shipped = [Voice.load(p) for p in sorted(RELEASED_VOICES.glob("*.npz"))]
    assert len(shipped) == 12 and all(v.ref_codes.shape[0] == 8 and v.ref_codes.max() < 2048 for v in shipped)
    for v, f in zip(ours.values(), [70, 85, 101]):
        assert v["ref_codes"].shape == (8, f) and int(v["ref_codes"].max()) < 2048
        assert 11.5 <= float(v["spk_emb"].norm()) <= 14.5
    with pytest.raises(ValueError, match="frame counts"):
        write_random_voices(tmp_path / "v.pt", ["a"], frames=[1, 2])
