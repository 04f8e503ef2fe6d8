"""Voice cloning: CAM++ features against an independent torch implementation, upstream's preprocessing and its
rejections, and `omni-voices add/list/remove` + `omni-run --voice` end to end on a tiny bundle (the cloned voice
against torch: Mimi `encode` and our torch CAM++ over torch features)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from omni_onnx.cli import main as run_main  # noqa: E402
from omni_onnx.cloning import (normalize_voice_name, prepare_reference, read_recording, speedup,  # noqa: E402
                               validate_reference)
from omni_onnx.errors import OmniError  # noqa: E402
from omni_onnx.model import OmniModel  # noqa: E402
from omni_onnx.speaker import log_mel  # noqa: E402
from omni_onnx.voices import Voice  # noqa: E402
from omni_onnx.voices_cli import main as voices_main  # noqa: E402

CLIPS = Path(__file__).parent / "fixtures" / "eval_omni"
SPEECH = CLIPS / "audio-en-04_please_introduce_spring_in_one_sentence.mp3"  # 3.2 s: 2.2 s after the speed-up


def torch_log_mel(pcm16k: np.ndarray) -> np.ndarray:
    """The same definition, independently: torch.stft (centred, reflect-padded, periodic Hann of 400 inside 512)
    and a Slaney filterbank built band by band from librosa's formulas, in float64."""
    x = torch.from_numpy(np.asarray(pcm16k, np.float64))
    spec = torch.stft(x, n_fft=512, hop_length=160, win_length=400,
                      window=torch.hann_window(400, periodic=True, dtype=torch.float64),
                      center=True, pad_mode="reflect", return_complex=True).abs() ** 2  # [257, frames]

    def mel(f):  # Slaney: 200/3 Hz per mel below 1 kHz, log-spaced above
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) * 27 / math.log(6.4)

    def hz(m):
        return m * 200 / 3 if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    pts = [hz(mel(20) + i * (mel(7600) - mel(20)) / 81) for i in range(82)]
    freqs = torch.arange(257, dtype=torch.float64) * 8000 / 256
    bank = torch.zeros(80, 257, dtype=torch.float64)
    for b in range(80):
        lo, mid, hi = pts[b], pts[b + 1], pts[b + 2]
        tri = torch.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)).clamp(min=0)
        bank[b] = tri * 2 / (hi - lo)
    feat = (bank @ spec).clamp(min=1e-10).log().T  # [frames, 80]
    return (feat - feat.mean(0, keepdim=True)).numpy()


@pytest.mark.parametrize("kind", ["speech", "noise", "odd_length"])
def test_mel_features_match_torch(kind):
    if kind == "speech":
        _, w16 = prepare_reference(*read_recording(SPEECH))
        x = w16
    else:
        rng = np.random.default_rng(0)
        x = 0.1 * rng.standard_normal(16000 * 2 + (123 if kind == "odd_length" else 0))
    got, want = log_mel(x), torch_log_mel(x)
    assert got.shape == want.shape == (1 + len(x) // 160, 80) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_speedup_keeps_150_of_every_225_ms():
    """pydub's algorithm at 16 kHz: 225 ms pieces, the last 50 ms of each dropped, 25 ms crossfades, the final
    partial piece appended whole; 3 s -> 13 pieces of 175 ms joined (175 + 12 x 150 ms) + 75 ms = 2.05 s."""
    rate = 16000
    x = (np.random.default_rng(1).standard_normal(3 * rate) * 3000).astype(np.int16)
    y = speedup(x, rate)
    ms = rate // 1000
    assert y.dtype == np.int16 and len(y) == 2050 * ms
    np.testing.assert_array_equal(y[:150 * ms], x[:150 * ms])  # first piece up to its crossfade
    np.testing.assert_array_equal(y[175 * ms:300 * ms], x[250 * ms:375 * ms])  # second piece after the crossfade
    np.testing.assert_array_equal(y[-75 * ms:], x[-75 * ms:])  # last partial piece
    c = speedup(np.full(rate, 1000, np.int16), rate)  # a crossfade of a constant keeps it (to the rounding)
    assert 998 <= c.min() and c.max() == 1000


def speech_like(seconds: float, peak: float, rate: int = 16000) -> np.ndarray:
    """A 200 Hz tone in 0.3 s syllables with pauses: loud frames and quiet ones, as speech has."""
    t = np.arange(int(seconds * rate)) / rate
    return (peak * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 1.6 * t) > 0)).astype(np.float32)


@pytest.mark.parametrize("audio, rate, message", [
    (speech_like(0.8, 0.5), 16000, "read at least 1 s"),
    (speech_like(2.4, 0.5), 16000, "too short: 1.6"),  # 1.6 s after the speed-up < 1.8 s
    (np.zeros(16000 * 4, np.float32), 16000, "too quiet"),
    (speech_like(4, 0.004), 16000, "too quiet"),
    (speech_like(4, 1.0), 16000, "clips"),
    (0.1 * np.random.default_rng(0).standard_normal(48000 * 4).astype(np.float32), 48000, "background noise"),
])
def test_rejections_explain_what_to_do(audio, rate, message):
    with pytest.raises(OmniError, match=message):
        prepare_reference(audio, rate)


def test_good_recording_is_cut_sped_up_and_resampled():
    # cut to 6 s = 26 pieces of 225 ms + 150 ms -> 175 + 25 x 150 + 150 ms = 4.075 s after the speed-up
    w24, w16 = prepare_reference(speech_like(9, 0.5, 48000), 48000)
    assert w24.size == 4075 * 24 and w16.size == 4075 * 16
    validate_reference(w16)


def test_voice_names():
    assert normalize_voice_name("  my   voice ") == "my voice"
    assert normalize_voice_name("") == "voice_clone"
    for bad, why in [("x" * 25, "at most 24"), ("Default", "reserved"), ("dylan", "preset"), ("../x", "may not")]:
        with pytest.raises(OmniError, match=why):
            normalize_voice_name(bad, ("dylan",))


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_ONNX_DATA", str(tmp_path / "data"))
    return tmp_path / "data" / "voices"


def torch_voice(bundle: Path, tiny_mimi: Path, tiny_campplus: Path) -> tuple[np.ndarray, np.ndarray]:
    """The clone computed in torch from the same preprocessed clip: transformers' Mimi `encode` and our torch CAM++
    over the independent torch features."""
    from omni_onnx.export.campplus import load_campplus
    from omni_onnx.export.mimi_decoder import load_mimi
    from omni_onnx.export.mimi_encoder import reference_codes
    w24, w16 = prepare_reference(*read_recording(SPEECH))
    codes = reference_codes(load_mimi(tiny_mimi), w24[None, None])[0]
    with torch.no_grad():
        emb = load_campplus(tiny_campplus)(torch.from_numpy(torch_log_mel(w16)).float()[None])[0].numpy()
    return codes[:, :math.ceil(w24.size / 1920)], emb


def test_voices_cli_end_to_end(tiny_clone_bundle, tiny_mimi, tiny_campplus, data_dir, tmp_path, capsys):
    b = str(tiny_clone_bundle)
    assert voices_main(["add", "  my  voice ", str(SPEECH), "--bundle", b]) == 0
    assert (data_dir / "my voice.npz").is_file()
    voice = Voice.load(data_dir / "my voice.npz")
    codes, emb = torch_voice(tiny_clone_bundle, tiny_mimi, tiny_campplus)
    np.testing.assert_array_equal(voice.ref_codes, codes)
    np.testing.assert_allclose(voice.spk_emb, emb, rtol=0, atol=1e-4)

    capsys.readouterr()
    assert voices_main(["list", "--bundle", b]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "my voice\tuser" in lines and "dylan\tpreset" in lines
    assert run_main(["--bundle", b, "--list-voices"]) == 0
    assert "my voice\tuser" in capsys.readouterr().out.splitlines()

    wav = tmp_path / "reply.wav"
    assert run_main(["--bundle", b, "--voice", "my voice", "--text", "Hi", "--greedy", "--max-new-tokens", "12",
                     "--out", str(wav)]) == 0
    assert wav.stat().st_size > 44

    assert voices_main(["remove", "my voice"]) == 0
    assert not (data_dir / "my voice.npz").exists()
    assert voices_main(["remove", "my voice"]) == 1
    assert "no user voice" in capsys.readouterr().err


def test_presets_win_and_names_are_checked(tiny_clone_bundle, data_dir, capsys):
    model = OmniModel.load(tiny_clone_bundle)
    assert model.speaker is not None and model.cloner is not None
    voice = model.clone_voice(*read_recording(SPEECH), "dylan copy")
    from omni_onnx.user_voices import save_user_voice
    save_user_voice(Voice("dylan", voice.ref_codes, voice.spk_emb))  # only possible by hand: add refuses it
    np.testing.assert_array_equal(model.voice("dylan").ref_codes, Voice.load(tiny_clone_bundle / "voices/dylan.npz")
                                  .ref_codes)
    assert voices_main(["add", "dylan", str(SPEECH), "--bundle", str(tiny_clone_bundle)]) == 1
    assert "preset" in capsys.readouterr().err
    with pytest.raises(OmniError, match="unknown voice"):
        model.voice("nobody")


def test_speaker_embedding_api(tiny_clone_bundle):
    """What the benchmarks call: `model.speaker.embed(pcm16k)` -> [192]."""
    _, w16 = prepare_reference(*read_recording(SPEECH))
    emb = OmniModel.load(tiny_clone_bundle).speaker.embed(w16)
    assert emb.shape == (192,) and emb.dtype == np.float32


def test_bundle_without_cloning_graphs(tiny_clone_bundle, tmp_path, data_dir, capsys):
    b = tmp_path / "no_clone"
    shutil.copytree(tiny_clone_bundle, b)
    manifest = json.loads((b / "manifest.json").read_text())
    for g in ("campplus", "mimi_encoder"):
        del manifest["graphs"][g]
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert voices_main(["add", "me", str(SPEECH), "--bundle", str(b)]) == 1
    assert "--campplus" in capsys.readouterr().err
    assert OmniModel.load(b).speaker is None
