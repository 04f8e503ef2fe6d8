"""Streaming Mimi decoder: the ONNX graph run frame by frame equals transformers' `MimiModel.decode` of all frames.

Pins: transposed convolutions must carry their overlap tail across frames (transformers' own frame-by-frame decode
drifts); the decoder transformer's sliding window (tiny: 8 steps = 4 frames, crossed by the 20-frame answers);
upstream zeroes codes >= 2049 before decoding; the KV rings are shared, so a used-up state must be refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from omni_onnx.contracts import ContractError, MimiDims, mimi_decoder_spec  # noqa: E402
from omni_onnx.export.mimi_decoder import ParityError, export, load_mimi, mimi_dims, verify  # noqa: E402
from omni_onnx.export.random_mimi import write_random_mimi  # noqa: E402
from omni_onnx.mimi import FrameBatcher, MimiStreamDecoder  # noqa: E402
from omni_onnx.session import GraphSession  # noqa: E402

FRAMES = 20
ATOL = 1e-4


@pytest.fixture(scope="session")
def mimi(tiny_mimi):
    return load_mimi(tiny_mimi)


@pytest.fixture(scope="session")
def graph(mimi, tmp_path_factory):
    return export(mimi, tmp_path_factory.mktemp("graphs") / "mimi_decoder.onnx")


@pytest.fixture()
def decoder(mimi, graph):
    dims = mimi_dims(mimi)
    return MimiStreamDecoder(GraphSession(graph, mimi_decoder_spec(dims)), dims)


@pytest.fixture(scope="session")
def codes():
    return np.random.default_rng(1).integers(0, 2048, (8, FRAMES))


def reference(mimi, codes: np.ndarray) -> np.ndarray:
    """Upstream's decode: codes >= 2049 set to 0, then `MimiModel.decode` of all frames at once."""
    c = torch.from_numpy(codes[None])
    with torch.no_grad():
        return mimi.decode(torch.where(c >= 2049, 0, c)).audio_values.numpy().reshape(-1)


def stream(decoder: MimiStreamDecoder, codes: np.ndarray) -> np.ndarray:
    state, out = decoder.initial_state(), []
    for f in range(codes.shape[1]):
        pcm, state = decoder.decode_frame(codes[:, f], state)
        out.append(pcm)
    return np.concatenate(out)


def test_answers_cross_the_sliding_window(mimi):
    assert FRAMES * mimi_dims(mimi).steps_per_frame > 2 * mimi.config.sliding_window


def test_stream_equals_full_decode(mimi, decoder, codes):
    got, want = stream(decoder, codes), reference(mimi, codes)
    assert got.shape == want.shape == (FRAMES * 1920,)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_transformers_framewise_decode_is_not_exact(mimi, codes):
    """Why the stateful graph exists: decoding frames independently differs from the whole-answer decode."""
    framewise = np.concatenate([reference(mimi, codes[:, f:f + 1]) for f in range(FRAMES)])
    assert np.abs(framewise - reference(mimi, codes)).max() > 100 * ATOL


def test_graph_matches_torch_step_every_frame(mimi, graph):
    verify(mimi, graph, frames=FRAMES)  # every output per frame vs MimiStreamStep, and stream vs full decode


def test_verify_catches_other_weights(graph, tmp_path):
    other = load_mimi(write_random_mimi(tmp_path, "tiny", seed=1))
    with pytest.raises(ParityError, match="audio"):
        verify(other, graph, frames=2)


def test_codes_from_2049_decode_as_zero(mimi, decoder, codes):
    special = codes.copy()
    special[:, 3] = 2049
    special[2, 5], special[7, 9] = 2050, 2051
    got = stream(decoder, special)
    np.testing.assert_allclose(got, reference(mimi, special), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(got, stream(decoder, np.where(special >= 2049, 0, special)))


@pytest.mark.parametrize("bad", [np.full(8, 2048), np.full(8, -1), np.zeros(7, np.int64), np.zeros(8, np.float32)])
def test_bad_codes_are_refused(decoder, bad):
    with pytest.raises(ValueError, match="codes"):
        decoder.decode_frame(bad, decoder.initial_state())


def test_appending_frames_never_changes_earlier_audio(mimi, decoder, codes):
    full_ref, full_stream = reference(mimi, codes), stream(decoder, codes)
    for n in (1, 7, 13):
        np.testing.assert_allclose(reference(mimi, codes[:, :n]), full_ref[:n * 1920], rtol=0, atol=ATOL)
        np.testing.assert_array_equal(stream(decoder, codes[:, :n]), full_stream[:n * 1920])


@pytest.mark.parametrize("sizes", [(2,), (3, 1, 4), (4,)])
def test_several_frames_per_call_equal_the_full_decode(mimi, decoder, codes, sizes):
    """Contract v2: a call takes F frames (the tiny window of 8 steps holds at most 4), and any split of an answer
    into calls gives `MimiModel.decode` of all frames at once, as one frame per call does."""
    state, out, f, k = decoder.initial_state(), [], 0, 0
    while f < FRAMES:
        n = sizes[k % len(sizes)]
        pcm, state = decoder.decode_frames(codes[:, f:f + n], state)
        assert pcm.shape == (min(n, FRAMES - f) * 1920,)
        out.append(pcm)
        f, k = f + n, k + 1
    np.testing.assert_allclose(np.concatenate(out), reference(mimi, codes), rtol=0, atol=ATOL)


def test_batcher_sends_the_first_frame_alone_then_full_calls(mimi, decoder, codes):
    batcher = FrameBatcher(decoder, per_call=3)
    chunks = [pcm for f in range(FRAMES) if (pcm := batcher.push(codes[:, f])) is not None] + [batcher.flush()]
    assert [len(c) // 1920 for c in chunks] == [1] + [3] * 6 + [1]
    assert batcher.flush() is None
    np.testing.assert_allclose(np.concatenate(chunks), reference(mimi, codes), rtol=0, atol=ATOL)
    assert FrameBatcher(decoder, per_call=9).per_call == 4  # the tiny window's most


@pytest.mark.parametrize("n", [0, 5])
def test_calls_beyond_the_window_are_refused(decoder, codes, n):
    assert decoder.max_frames == 4
    with pytest.raises(ValueError, match="1 <= F <= 4"):
        decoder.decode_frames(codes[:, :n], decoder.initial_state())


def test_one_frame_graph_for_static_bundles(mimi, tmp_path):
    """A static bundle's graph has no symbolic dimension: one frame per call, same audio."""
    dims = mimi_dims(mimi)
    path = export(mimi, tmp_path / "mimi_decoder.onnx", frames_per_call=1)
    spec = mimi_decoder_spec(dims, 1)
    assert spec.inputs[0].dims == (1, 8, 1) and spec.outputs[0].dims == (1, 1, 1920)
    decoder = MimiStreamDecoder(GraphSession(path, spec), dims)
    assert decoder.max_frames == 1
    assert decoder.session.sess.get_inputs()[0].shape == [1, 8, 1]
    verify(mimi, path, frames=6, frames_per_call=1)


def test_used_up_state_is_refused(decoder, codes):
    state = decoder.initial_state()
    decoder.decode_frame(codes[:, 0], state)
    with pytest.raises(RuntimeError, match="latest"):
        decoder.decode_frame(codes[:, 1], state)


def test_dims_round_trip_and_contract(mimi, graph):
    dims = mimi_dims(mimi)
    assert MimiDims.from_dict(json.loads(json.dumps(dims.to_dict()))) == dims
    other = MimiDims(**{**dims.to_dict(), "conv_states": dims.conv_states, "kv_window": 16})
    with pytest.raises(ContractError):
        GraphSession(graph, mimi_decoder_spec(other))


def test_load_mimi_names_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_mimi(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json"):
        load_mimi(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_mimi(tmp_path)
