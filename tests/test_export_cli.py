"""omni-export entry points: --from-hub against a local mirror standing in for the hub, offline failure, a bundle
without Mimi, a MoE demo, and checkpoint errors surfacing as one line."""

from __future__ import annotations

import shutil

import pytest
import torch

from omni_onnx.bundle import Bundle
from omni_onnx.cli import main as run_main
from omni_onnx.export.cli import main as export_main
from omni_onnx.export.hub import CHECKPOINT_REPO, MIMI_REPO, SENSEVOICE_REPO, SIGLIP_REPO


def test_from_hub_with_a_local_mirror(tiny_checkpoint, tiny_mimi, tiny_siglip, tiny_sensevoice, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / CHECKPOINT_REPO).mkdir(parents=True)
    shutil.copy(tiny_checkpoint, mirror / CHECKPOINT_REPO / "sft_omni_768.pth")
    for folder, repo in ((tiny_mimi, MIMI_REPO), (tiny_siglip, SIGLIP_REPO), (tiny_sensevoice, SENSEVOICE_REPO)):
        shutil.copytree(folder, mirror / repo)
    out = tmp_path / "bundle"
    assert export_main(["--from-hub", "--hub-mirror", str(mirror), "--out", str(out), "--skip-verify"]) == 0
    assert run_main(["--bundle", str(out), "--text", "hi", "--greedy", "--max-new-tokens", "10",
                     "--out", str(tmp_path / "a.wav")]) == 0


def test_from_hub_offline_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert export_main(["--from-hub", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot download jingyaogong/minimind-3o-pytorch" in err
    assert "--hub-mirror" in err


def test_bundle_without_mimi_emits_codes_but_explains_audio(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "nomimi"
    assert export_main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--voices"]) == 0
    assert run_main(["--bundle", str(out), "--text", "hi", "--greedy", "--max-new-tokens", "12",
                     "--dump-codes", str(tmp_path / "c.json")]) == 0
    capsys.readouterr()
    assert run_main(["--bundle", str(out), "--text", "hi", "--out", str(tmp_path / "a.wav")]) == 1
    err = capsys.readouterr().err
    assert "no Mimi decoder" in err and "--mimi" in err


def test_partial_checkpoint_names_missing_keys(tiny_checkpoint, tmp_path, capsys):
    sd = torch.load(tiny_checkpoint)
    del sd["talker.norm.weight"]
    bad = tmp_path / "partial.pth"
    torch.save(sd, bad)
    assert export_main(["--checkpoint", str(bad), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("omni-export: error:") and "missing: talker.norm.weight" in err
    assert "misshaped" not in err  # one missing key must not derail the shape inference


@pytest.mark.parametrize("content", [b"", b"garbage"])
def test_unreadable_checkpoint(tmp_path, capsys, content):
    bad = tmp_path / "x.pth"
    bad.write_bytes(content)
    assert export_main(["--checkpoint", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("omni-export: error:")


def test_demo_moe_is_a_moe_bundle_and_refused_with_a_checkpoint_or_static(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "moe"
    assert export_main(["--demo", "--moe", "--skip-verify", "--out", str(out), "--voices"]) == 0
    assert Bundle.open(out).config.use_moe
    assert run_main(["--bundle", str(out), "--text", "hi", "--greedy", "--max-new-tokens", "6",
                     "--out", str(tmp_path / "a.wav")]) == 0
    capsys.readouterr()
    assert export_main(["--checkpoint", str(tiny_checkpoint), "--moe", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop --moe" in err and not (tmp_path / "x").exists()
    assert export_main(["--demo", "--moe", "--static", "--skip-verify", "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("omni-export: error: a MoE checkpoint has no static form") and \
        not (tmp_path / "y").exists()
