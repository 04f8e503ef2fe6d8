"""SenseVoice encoder: our torch module vs funasr (checked-in golden), ONNX vs our module, folder loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omni_onnx.contracts import sensevoice_spec
from omni_onnx.export import sensevoice
from omni_onnx.export.random_sensevoice import BPE_MODEL, TAGS, write_random_sensevoice
from omni_onnx.session import GraphSession
from omni_onnx.speech import CMVN_FILE, QUERIES_FILE, VOCAB_FILE, SpeechEncoder, load_audio, parse_am_mvn

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_random_sensevoice(tmp_path_factory.mktemp("sv") / "SenseVoiceSmall", size="tiny", seed=0)


@pytest.fixture(scope="module")
def loaded(folder):
    return sensevoice.load_sensevoice(folder)


@pytest.fixture(scope="module")
def exported(loaded, tmp_path_factory) -> Path:
    model, info = loaded
    out = tmp_path_factory.mktemp("bundle")
    sensevoice.export(model, out)
    sensevoice.write_bundle_files(model, info, out)
    return out


def test_module_matches_funasr_golden(loaded):
    """funasr's SenseVoiceEncoderSmall + ctc_lo on these weights (computed once; see fixtures/README.md)."""
    model, _ = loaded
    golden = np.load(FIXTURES / "sensevoice_tiny_funasr.npz")
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((1, 22, 560)).astype(np.float32))
    mask = torch.arange(22)[None] < 17
    with torch.no_grad():
        h, logits = model(x, mask)
    np.testing.assert_allclose(h.numpy(), golden["encoder_out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits.numpy(), golden["ctc_logits"], atol=1e-5, rtol=0)


def test_padding_does_not_reach_real_rows(loaded):
    model, _ = loaded
    x = torch.randn(1, 20, 560, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        alone, _ = model(x[:, :14], torch.ones(1, 14, dtype=torch.bool))
        padded, _ = model(x, torch.arange(20)[None] < 14)
    torch.testing.assert_close(padded[:, :14], alone, atol=1e-5, rtol=0)


def test_onnx_parity_at_1_6_20_seconds(loaded, exported):
    model, _ = loaded
    diffs = sensevoice.verify(model, exported / sensevoice.FILENAME)
    assert set(diffs) == {"1 s (17 frames)", "6 s (100 frames)", "20 s (333 frames)", "1 s + 5 padded frames"}
    assert max(d for case in diffs.values() for d in case.values()) <= 1e-4


def test_export_is_shaped_for_onnxruntime(loaded, exported):
    """What made the int8 graph ~18 % faster at 6 s: each Linear one 2-D Gemm (no Reshape pair around it) and
    the FSMN memory one 2-D convolution per layer, its `+ values` in the kernel (no Add after it)."""
    import onnx

    model, _ = loaded
    nodes = onnx.load(exported / sensevoice.FILENAME).graph.node
    layers = 1 + len(model.encoder.encoders) + len(model.encoder.tp_encoders)
    ops = [n.op_type for n in nodes]
    assert ops.count("Gemm") == 4 * layers + 1
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == layers
    assert all(len(next(a.ints for a in n.attribute if a.name == "kernel_shape")) == 2 for n in convs)
    assert ops.count("Reshape") <= 6 * layers + 2  # heads (4) and the convolution's rows (2); was 11 per layer


def test_bundle_files(loaded, exported, folder):
    model, _ = loaded
    vocab = json.loads((exported / VOCAB_FILE).read_text(encoding="utf-8"))
    assert len(vocab) == model.cfg.vocab_size and vocab[:3] == ["<unk>", "<s>", "</s>"] and vocab[-1] == TAGS[-1]
    np.testing.assert_array_equal(np.load(exported / CMVN_FILE),
                                  parse_am_mvn((folder / "am.mvn").read_text(encoding="utf-8")))
    np.testing.assert_array_equal(np.load(exported / QUERIES_FILE), model.embed.weight.detach().numpy())


def test_runtime_encoder_matches_module(loaded, exported):
    """The runtime path (file -> features -> graph) against the module on the same features."""
    model, _ = loaded
    spec = sensevoice_spec(model.cfg.vocab_size, model.cfg.output_size)
    enc = SpeechEncoder(GraphSession(exported / sensevoice.FILENAME, spec), exported)
    wav = load_audio(FIXTURES / "eval_omni" / "audio-en-05_why_is_the_sky_blue.mp3")
    feats = enc.features(wav)
    with torch.no_grad():
        ref, _ = model(torch.from_numpy(feats)[None], torch.ones(1, len(feats), dtype=torch.bool))
    np.testing.assert_allclose(enc.encode(wav), ref[0].numpy(), atol=1e-4, rtol=0)
    assert isinstance(enc.transcribe(wav, language="en"), str)


def test_folder_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sensevoice.load_sensevoice(tmp_path / "nope")
    broken = shutil.copytree(folder, tmp_path / "no_bpe")
    (broken / BPE_MODEL).unlink()
    with pytest.raises(ValueError, match="lacks the tokenizer"):
        sensevoice.load_sensevoice(broken)
    other = shutil.copytree(folder, tmp_path / "wrong_size")
    text = (other / "config.yaml").read_text(encoding="utf-8").replace("tp_blocks: 1", "tp_blocks: 2")
    (other / "config.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="does not match its config.yaml"):
        sensevoice.load_sensevoice(other)
