"""Shared fixtures: tiny random checkpoints (released formats) and the bundles exported from them, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_onnx.config import TINY


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from omni_onnx.export.random_checkpoint import write_random_pth
    return write_random_pth(tmp_path_factory.mktemp("ckpt") / "sft_omni_768.pth", TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_mimi(tmp_path_factory) -> Path:
    from omni_onnx.export.random_mimi import write_random_mimi
    return write_random_mimi(tmp_path_factory.mktemp("mimi") / "mimi", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    from omni_onnx.export.random_siglip import write_random_siglip
    return write_random_siglip(tmp_path_factory.mktemp("siglip") / "siglip2-base-p32-256-ve", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sensevoice(tmp_path_factory) -> Path:
    from omni_onnx.export.random_sensevoice import write_random_sensevoice
    return write_random_sensevoice(tmp_path_factory.mktemp("sv") / "SenseVoiceSmall", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tiny_mimi, tiny_siglip, tiny_sensevoice, tmp_path_factory) -> Path:
    """Exported through the CLI's own code path, parity checks included."""
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(tiny_checkpoint, tiny_mimi, tiny_siglip, tiny_sensevoice),
                         tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def tiny_torch_model(tiny_checkpoint):
    from omni_onnx.export.checkpoint import load_model
    return load_model(tiny_checkpoint)


def _lively(sd: dict) -> dict:
    """Raw N(0, 0.02) weights make the model repeat one token and one code; amplifying the layer outputs and the
    Talker's inputs gives varied text and codes, so the loop's paths are exercised."""
    for k in sd:
        if k.endswith(("o_proj.weight", "down_proj.weight")):
            sd[k] = sd[k] * 8
    for k in ("talker.embed_proj.0.weight", "talker.codec_proj.0.weight", "talker.embed_tokens.base.weight"):
        sd[k] = sd[k] * 30
    return sd


def _steer(sd: dict, text_token: int, code: int) -> dict:
    """EOS (2) wins where `text_token` would have; stop code 2050 where `code` would have."""
    emb = sd["model.embed_tokens.weight"].clone()
    emb[2] = 1.2 * emb[text_token]
    sd["model.embed_tokens.weight"] = sd["lm_head.weight"] = emb
    for k in [k for k in sd if k == "talker.lm_head.base.weight" or
              (k.startswith("talker.lm_head.adapters.") and k.endswith(".2.weight"))]:
        w = sd[k].clone()
        w[2050] = 1.2 * w[code]
        sd[k] = w
    return sd


@pytest.fixture(scope="session")
def tiny_lively_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with `_lively` weights: varied text and codes (raw random weights repeat one token)."""
    import torch
    sd = _lively({k: v.float() for k, v in torch.load(tiny_checkpoint).items()})
    path = tmp_path_factory.mktemp("lively") / "sft_omni_768.pth"
    torch.save({k: v.half() for k, v in sd.items()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_lively_bundle(tiny_lively_checkpoint, tiny_mimi, tiny_sensevoice, tmp_path_factory) -> Path:
    """The lively weights as a bundle with speech in and out and the released voices: answers with real characters
    (the raw tiny model answers in newlines only) that never reach EOS, text and codes that follow their inputs
    (the raw model's codes barely do: a Talker fed stale codes still matched the reference). No parity checks: the
    tests that use it compare against the torch reference themselves."""
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(tiny_lively_checkpoint, tiny_mimi, None, tiny_sensevoice),
                         tmp_path_factory.mktemp("lively") / "bundle", verify=False)


@pytest.fixture(scope="session")
def tiny_eos_checkpoint(tiny_lively_checkpoint, tmp_path_factory) -> tuple[Path, list[int]]:
    """A tiny checkpoint whose greedy answer to the test prompt reaches EOS and then stop codes on every codebook
    before max_new_tokens, found by steering EOS/stop onto tokens the lively model emits mid-answer.

    Returns (checkpoint, prompt ids)."""
    import torch

    from omni_onnx.export.checkpoint import load_model
    from omni_onnx.export.reference import chat_prompt_ids, reference_generate
    prompt = chat_prompt_ids([{"role": "user", "content": "Why is the sky blue?"}])
    base = {k: v.float() for k, v in torch.load(tiny_lively_checkpoint).items()}
    path = tmp_path_factory.mktemp("eos") / "sft_omni_768.pth"
    probe = reference_generate(load_model(tiny_lively_checkpoint), prompt, 40, greedy=True)
    for t in probe.text_ids[4:12]:
        for c in probe.audio_codes[0][6:14]:
            torch.save({k: v.half() for k, v in _steer(dict(base), t, c).items()}, path)
            d = reference_generate(load_model(path), prompt, 64, greedy=True)
            if 2 in d.text_ids and len(d.audio_codes[0]) < 64 and d.frames:
                return path, prompt
    raise RuntimeError("no steering found that reaches EOS and stops; revisit _steer")


@pytest.fixture(scope="session")
def tiny_campplus(tmp_path_factory) -> Path:
    """A random full-size CAM++ state dict in the released `campplus_cn_common.pt` format (6.85 M parameters)."""
    from omni_onnx.export.random_campplus import write_random_campplus
    return write_random_campplus(tmp_path_factory.mktemp("campplus") / "campplus_cn_common.pt", seed=0)


@pytest.fixture(scope="session")
def tiny_clone_bundle(tiny_checkpoint, tiny_mimi, tiny_campplus, tmp_path_factory) -> Path:
    """A tiny bundle that can clone voices (Mimi decoder + encoder, CAM++), exported through the CLI's code path.
    No vision or speech input and no parity checks, to keep it quick: tiny_bundle checks the LLM and decoder
    graphs, test_campplus and test_mimi_encoder run the cloning graphs' checks on this bundle's files."""
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(tiny_checkpoint, tiny_mimi, campplus=tiny_campplus),
                         tmp_path_factory.mktemp("bundles") / "tiny_clone", verify=False)


@pytest.fixture(scope="session")
def tiny_static_bundle(tiny_lively_checkpoint, tiny_mimi, tiny_siglip, tmp_path_factory) -> Path:
    """A static bundle (context 160, prefill chunk 8) with Mimi and vision: test_static checks it, test_cli_errors
    runs the CLI on it."""
    from omni_onnx.contracts import StaticShape
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(tiny_lively_checkpoint, tiny_mimi, tiny_siglip),
                         tmp_path_factory.mktemp("static") / "bundle", verify=False,
                         static=StaticShape(context=160, prefill_chunk=8))
