"""Speech in, end to end on a tiny bundle: a 44.1 kHz stereo mp3 question -> one `<|audio_pad|>` per encoder frame,
the projected features injected as upstream does, greedy codes identical to the torch reference loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from torch_side import TorchEncoders

from omni_onnx.cli import main
from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import chat_prompt_ids, reference_generate

CLIP = Path(__file__).parent / "fixtures" / "eval_omni" / "audio-en-05_why_is_the_sky_blue.mp3"


@pytest.fixture(scope="module")
def stereo_44k_mp3(tmp_path_factory) -> Path:
    wav, sr = sf.read(CLIP, dtype="float32")
    wav = soxr.resample(wav, sr, 44100)
    path = tmp_path_factory.mktemp("clip") / "question.mp3"
    sf.write(path, np.stack([wav, 0.5 * wav], axis=1), 44100, format="MP3")
    return path


def test_cli_with_a_44k_stereo_mp3(tiny_bundle, tiny_torch_model, tiny_siglip, tiny_sensevoice, stereo_44k_mp3,
                                   tmp_path, capsys):
    dump_path, wav_out = tmp_path / "a.json", tmp_path / "a.wav"
    assert main(["--bundle", str(tiny_bundle), "--audio", str(stereo_44k_mp3), "--show-transcript", "--greedy",
                 "--max-new-tokens", "24", "--dump-codes", str(dump_path), "--out", str(wav_out)]) == 0
    assert "[heard:" in capsys.readouterr().out
    got = CodeDump.read(dump_path)
    enc = TorchEncoders(tiny_torch_model, tiny_siglip, tiny_sensevoice)
    feats = enc.audio(stereo_44k_mp3)
    ids = chat_prompt_ids([{"role": "user", "content": "<|audio_pad|>" * len(feats)}])
    assert got.prompt_ids == ids
    ref = reference_generate(tiny_torch_model, ids, 24, greedy=True, prefill_embeds=enc.prefill_embeds(ids, feats, []))
    assert (got.text_ids, got.audio_codes, got.frames) == (ref.text_ids, ref.audio_codes, ref.frames)
    assert sf.info(wav_out).samplerate == 24000 and sf.info(wav_out).frames == 1920 * len(got.frames)


@pytest.mark.parametrize("content", [b"", b"this is not audio"], ids=["empty", "text"])
def test_unreadable_audio_is_a_clear_error(tiny_bundle, tmp_path, capsys, content):
    bad = tmp_path / "q.mp3"
    bad.write_bytes(content)
    assert main(["--bundle", str(tiny_bundle), "--audio", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "q.mp3" in err
