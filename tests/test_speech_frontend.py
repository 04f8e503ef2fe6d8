"""Speech front end (no torch): decoding, resampling, fbank + LFR + CMVN vs upstream's (funasr golden), bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omni_onnx import speech
from omni_onnx.errors import OmniError
from omni_onnx.export.random_sensevoice import _am_mvn

FIXTURES = Path(__file__).parent / "fixtures"
CLIP = FIXTURES / "eval_omni" / "audio-en-05_why_is_the_sky_blue.mp3"  # 24 kHz mono mp3


@pytest.fixture(scope="module")
def golden():
    return np.load(FIXTURES / "sensevoice_tiny_funasr.npz")


@pytest.fixture(scope="module")
def cmvn():
    # the tiny random folder's am.mvn (seed 0), which the golden was computed with
    return speech.parse_am_mvn(_am_mvn(560, np.random.default_rng(0)))


def test_load_audio_matches_upstream_resampling(golden):
    wav = speech.load_audio(CLIP)
    assert wav.dtype == np.float32 and len(wav) == int(golden["num_samples"])
    np.testing.assert_array_equal(wav[:4000], golden["wav_head"])  # sf.read + librosa.resample (soxr HQ)


def test_features_match_funasr_wavfrontend(golden, cmvn):
    """torchaudio's kaldi.fbank (via funasr's WavFrontend, dither 0) vs kaldi-native-fbank: float rounding only."""
    feats = speech.features(speech.load_audio(CLIP), cmvn)
    assert feats.shape == golden["features"].shape
    np.testing.assert_allclose(feats, golden["features"], atol=2e-3, rtol=0)
    assert np.abs(feats - golden["features"]).mean() < 1e-4


def test_lfr_rows():
    frames = np.arange(13, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    rows = speech.stack_lfr(frames, 7, 6)
    assert rows.shape == (3, 14)
    np.testing.assert_array_equal(rows[0, ::2], [0, 0, 0, 0, 1, 2, 3])  # 3 copies of frame 0 in front
    np.testing.assert_array_equal(rows[2, ::2], [9, 10, 11, 12, 12, 12, 12])  # last frame repeated


@pytest.mark.parametrize("seconds,tokens", [(1.0, 17), (3.0, 50), (6.0, 100)])
def test_audio_token_count(cmvn, seconds, tokens):
    n = int(seconds * 16000)
    assert speech.audio_token_count(n) == tokens
    wav = (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32)
    assert len(speech.features(wav, cmvn)) == tokens


def test_any_rate_and_channels(tmp_path):
    mono, _ = sf.read(CLIP)
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    for name, fmt in (("a.mp3", "MP3"), ("a.flac", "FLAC"), ("a.ogg", "OGG"), ("a.wav", "WAV")):
        sf.write(tmp_path / name, stereo, 44100, format=fmt)
        wav = speech.load_audio(tmp_path / name)
        assert wav.ndim == 1 and abs(len(wav) - len(mono) * 16000 / 44100) <= 1


def test_ctc_greedy():
    vocab = ["<unk>", "<s>", "</s>", "\u2581he", "llo", "\u2581w", "<0xC3>", "<0xA9>", "<|en|>"]
    ids = [8, 0, 3, 3, 4, 0, 4, 5, 6, 7, 0]
    logits = np.eye(len(vocab), dtype=np.float32)[ids]
    assert speech.ctc_greedy(logits, vocab) == "hellollo w\u00e9"


def test_am_mvn_errors():
    with pytest.raises(ValueError, match="not a SenseVoice am.mvn"):
        speech.parse_am_mvn("<Nnet>\n</Nnet>\n")


def _wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def test_bad_input_messages(tmp_path):
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n", encoding="utf-8")
    cases = [
        (tmp_path / "missing.wav", "does not exist"),
        (text, "cannot read .* as audio .*WAV, FLAC, OGG or MP3"),
        (_wav(tmp_path / "empty.wav", np.zeros(0, np.float32)), "no audio samples"),
        (_wav(tmp_path / "short.wav", 0.1 * np.ones(200, np.float32)), "at least 25 ms"),
        (_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32)), "silent"),
    ]
    for path, message in cases:
        with pytest.raises(OmniError, match=message):
            speech.load_audio(path)
    long = _wav(tmp_path / "long.wav", 0.1 * np.ones(3 * 16000, np.float32))
    with pytest.raises(OmniError, match=r"3\.0 s long; the limit is 2 s \(33 audio tokens\)\. Audio is not truncated"):
        speech.load_audio(long, max_seconds=2)
