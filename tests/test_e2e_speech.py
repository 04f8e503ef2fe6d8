"""Speech in, end to end on a tiny bundle: a 44.1 kHz stereo mp3 question -> one `<|audio_pad|>` per encoder frame,
the projected features injected as upstream does, greedy codes identical to the torch reference loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from omni_onnx.cli import main
from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import chat_prompt_ids, reference_generate
from omni_onnx.speech import features, load_audio, parse_am_mvn

CLIP = Path(__file__).parent / "fixtures" / "why_is_the_sky_blue.mp3"


@pytest.fixture(scope="module")
def stereo_44k_mp3(tmp_path_factory) -> Path:
    wav, sr = sf.read(CLIP, dtype="float32")
    wav = soxr.resample(wav, sr, 44100)
    path = tmp_path_factory.mktemp("clip") / "question.mp3"
    sf.write(path, np.stack([wav, 0.5 * wav], axis=1), 44100, format="MP3")
    return path


def test_spoken_question_matches_reference(tiny_bundle, tiny_torch_model, tiny_sensevoice, stereo_44k_mp3,
                                           tmp_path, capsys):
    from omni_onnx.export.sensevoice import load_sensevoice
    dump_path, wav_out = tmp_path / "a.json", tmp_path / "a.wav"
    assert main(["--bundle", str(tiny_bundle), "--audio", str(stereo_44k_mp3), "--show-transcript", "--greedy",
                 "--max-new-tokens", "24", "--dump-codes", str(dump_path), "--out", str(wav_out)]) == 0
    assert "[heard:" in capsys.readouterr().out
    got = CodeDump.read(dump_path)

    encoder, _ = load_sensevoice(tiny_sensevoice)
    cmvn = parse_am_mvn((tiny_sensevoice / "am.mvn").read_text())
    x = torch.from_numpy(features(load_audio(stereo_44k_mp3), cmvn))[None]
    with torch.no_grad():
        rows = encoder.encoder(x, torch.ones(x.shape[:2], dtype=torch.bool))
        feats = tiny_torch_model.audio_project(rows)[0]
    ids = chat_prompt_ids([{"role": "user", "content": "<|audio_pad|>" * len(feats)}])
    assert got.prompt_ids == ids
    with torch.no_grad():
        h = tiny_torch_model.model.embed_tokens(torch.tensor([ids]))
    start = ids.index(16)
    h[0, start:start + len(feats)] = feats
    ref = reference_generate(tiny_torch_model, ids, 24, greedy=True, prefill_embeds=h)
    assert (got.text_ids, got.audio_codes, got.frames) == (ref.text_ids, ref.audio_codes, ref.frames)
    assert sf.info(wav_out).samplerate == 24000


@pytest.mark.parametrize("content", [b"", b"this is not audio"], ids=["empty", "text"])
def test_unreadable_audio_is_a_clear_error(tiny_bundle, tmp_path, capsys, content):
    bad = tmp_path / "q.mp3"
    bad.write_bytes(content)
    assert main(["--bundle", str(tiny_bundle), "--audio", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "q.mp3" in err
