"""Bad input gives one clear line and a non-zero exit, never a traceback from inside onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from omni_onnx.cli import main


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_one_line(rc: int, err: str, *needles: str) -> None:
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("omni-run: error:"), err
    for n in needles:
        assert n in err, err


def test_missing_bundle(capsys, tmp_path):
    rc, err = run(capsys, "--bundle", str(tmp_path / "nope"), "--text", "hi")
    assert_one_line(rc, err, "no bundle at", "omni-export")


def test_truncated_graph(capsys, bundle_copy):
    g = bundle_copy / "thinker.onnx"
    g.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    rc, err = run(capsys, "--bundle", str(bundle_copy), "--text", "hi")
    assert_one_line(rc, err, "thinker.onnx", "checksum")


def test_corrupted_graph_without_checksum_is_still_a_clear_error(capsys, bundle_copy):
    """Even if the manifest is edited to match, a broken graph fails with a message, not an ORT traceback."""
    g = bundle_copy / "talker.onnx"
    g.write_bytes(b"not an onnx graph")
    m = json.loads((bundle_copy / "manifest.json").read_text())
    from omni_onnx.bundle import sha256_file
    m["graphs"]["talker"]["sha256"] = sha256_file(g)
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    rc, err = run(capsys, "--bundle", str(bundle_copy), "--text", "hi")
    assert_one_line(rc, err, "talker.onnx", "re-export")


def test_checksum_mismatch(capsys, bundle_copy):
    (bundle_copy / "tokenizer.json").write_text((bundle_copy / "tokenizer.json").read_text() + " ")
    rc, err = run(capsys, "--bundle", str(bundle_copy), "--text", "hi")
    assert_one_line(rc, err, "tokenizer.json", "checksum")


def test_bundle_of_another_version(capsys, bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = 999
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    rc, err = run(capsys, "--bundle", str(bundle_copy), "--text", "hi")
    assert_one_line(rc, err, "format version 999", "re-export")


def test_missing_graph(capsys, bundle_copy):
    (bundle_copy / "talker.onnx").unlink()
    rc, err = run(capsys, "--bundle", str(bundle_copy), "--text", "hi")
    assert_one_line(rc, err, "missing talker.onnx")


def test_unknown_voice(capsys, tiny_bundle):
    rc, err = run(capsys, "--bundle", str(tiny_bundle), "--text", "hi", "--voice", "nobody")
    assert_one_line(rc, err, "unknown voice 'nobody'", "dylan")


def test_empty_text(capsys, tiny_bundle):
    rc, err = run(capsys, "--bundle", str(tiny_bundle), "--text", "  ")
    assert_one_line(rc, err, "empty")


def test_out_in_missing_folder(capsys, tiny_bundle, tmp_path):
    rc, err = run(capsys, "--bundle", str(tiny_bundle), "--text", "hi", "--out", str(tmp_path / "no" / "r.wav"))
    assert_one_line(rc, err, "does not exist")


def test_list_voices(capsys, tiny_bundle):
    assert main(["--bundle", str(tiny_bundle), "--list-voices"]) == 0
    assert {"dylan", "arthur"} <= set(capsys.readouterr().out.split())


def test_same_size_edit_after_a_verified_load_is_caught(capsys, bundle_copy):
    """Loads skip re-hashing files whose size and mtime match the last full check; an edit changes the mtime."""
    from omni_onnx.bundle import Bundle
    Bundle.open(bundle_copy)  # full check, writes the stamp
    assert (bundle_copy / ".verified.json").is_file()
    g = bundle_copy / "talker.onnx"
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF
    g.write_bytes(bytes(data))
    rc, err = run(capsys, "--bundle", str(bundle_copy), "--text", "hi")
    assert_one_line(rc, err, "talker.onnx", "checksum")


IMAGE = Path(__file__).parent / "fixtures" / "eval_omni" / "image-01-orange-cat-moon-desk.jpg"


def test_vision_loads_on_first_use_and_is_checksummed_then(bundle_copy):
    """A turn without an image never opens the vision graph; opened later, a file edited since the bundle was
    verified is refused as it would have been at load."""
    from omni_onnx.errors import BundleError
    from omni_onnx.model import OmniModel
    model = OmniModel.load(bundle_copy)
    assert "vision" not in vars(model)
    g = bundle_copy / "vision.onnx"
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF
    g.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="vision.onnx does not match its checksum"):
        model.encode_image(IMAGE)


def test_vision_loaded_on_first_use_checks_its_contract(bundle_copy):
    from omni_onnx.contracts import ContractError
    from omni_onnx.model import OmniModel
    model = OmniModel.load(bundle_copy)
    assert model.encode_image(IMAGE).shape == (model.config.image_token_len, model.config.hidden_size)
    other = OmniModel.load(bundle_copy)
    other.bundle.specs["vision"] = other.bundle.specs["audio_projector"]  # what a mismatched file would meet
    with pytest.raises(ContractError, match="graph audio_projector does not match its contract"):
        other.encode_image(IMAGE)
