"""Whole-clip Mimi encoder graph: codes identical to transformers' `MimiModel.encode` (random-weight tiny Mimi)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from omni_onnx.contracts import mimi_encoder_spec  # noqa: E402
from omni_onnx.export.mimi_decoder import load_mimi  # noqa: E402
from omni_onnx.export.mimi_encoder import reference_codes, verify  # noqa: E402
from omni_onnx.session import GraphSession  # noqa: E402


@pytest.fixture(scope="module")
def mimi(tiny_mimi):
    return load_mimi(tiny_mimi)


@pytest.fixture(scope="module")
def session(tiny_clone_bundle):
    """Exported by omni-export's code path for the clone bundle (checked by the tests below)."""
    return GraphSession(tiny_clone_bundle / "mimi_encoder.onnx", mimi_encoder_spec())


# shorter than a frame, whole frames, one sample into a frame, and 20 frames: past the tiny model's 8-step
# (4-frame) attention window, so the graph's own sliding-window mask is checked too
SPEECH = Path(__file__).parent / "fixtures/eval_omni/audio-en-04_please_introduce_spring_in_one_sentence.mp3"
LENGTHS = [1000, 1920, 3 * 1920, 3 * 1920 + 1, 20 * 1920 + 555]


@pytest.mark.parametrize("samples", LENGTHS)
def test_codes_identical_to_transformers(mimi, session, samples):
    audio = (0.3 * np.random.default_rng(samples).standard_normal((1, 1, samples))).astype(np.float32)
    want = reference_codes(mimi, audio)
    got = session.run({"audio": audio})["codes"]
    assert got.shape == want.shape == (1, 8, math.ceil(samples / 1920))
    np.testing.assert_array_equal(got, want)


def test_speech_codes_identical(mimi, session):
    wav, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 24000
    audio = wav[None, None]
    np.testing.assert_array_equal(session.run({"audio": audio})["codes"], reference_codes(mimi, audio))


def test_verify_passes_on_the_exported_graph(mimi, tiny_clone_bundle):
    assert verify(mimi, tiny_clone_bundle / "mimi_encoder.onnx")["codes"] == 0
