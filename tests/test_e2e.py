"""End to end on a tiny bundle: the torch-free runtime reproduces our torch reference of upstream's generate
exactly (greedy), writes a valid streamed WAV, and never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from omni_onnx.cli import main
from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import chat_prompt_ids, reference_generate, voice_prompt_messages
from omni_onnx.export.voices import RELEASED_VOICES
from omni_onnx.voices import Voice
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import Conversation, OmniModel, TurnEnd

QUESTION = "Why is the sky blue?"


def test_cli_greedy_codes_equal_torch_reference(tiny_bundle, tiny_torch_model, tmp_path, capsys):
    dump_path, wav = tmp_path / "out.json", tmp_path / "reply.wav"
    rc = main(["--bundle", str(tiny_bundle), "--text", QUESTION, "--greedy", "--max-new-tokens", "48",
               "--dump-codes", str(dump_path), "--out", str(wav)])
    assert rc == 0, capsys.readouterr().err
    got = CodeDump.read(dump_path)
    prompt = chat_prompt_ids([{"role": "user", "content": QUESTION}])
    ref = reference_generate(tiny_torch_model, prompt, 48, greedy=True)
    assert got.prompt_ids == ref.prompt_ids
    assert got.text_ids == ref.text_ids
    assert got.audio_codes == ref.audio_codes
    assert got.frames == ref.frames and len(got.frames) > 0

    audio, sr = sf.read(wav, dtype="float32")
    assert sr == 24000 and sf.info(wav).subtype == "PCM_16"
    assert len(audio) == 1920 * len(got.frames)


def test_streamed_wav_equals_mimi_full_decode(tiny_bundle, tiny_mimi, tmp_path):
    """The WAV written frame by frame equals transformers' Mimi decode of all frames (codes >= 2049 zeroed)."""
    from omni_onnx.export.mimi_decoder import load_mimi
    dump_path, wav = tmp_path / "out.json", tmp_path / "reply.wav"
    assert main(["--bundle", str(tiny_bundle), "--text", QUESTION, "--seed", "7", "--max-new-tokens", "40",
                 "--dump-codes", str(dump_path), "--out", str(wav)]) == 0
    frames = np.array(CodeDump.read(dump_path).frames, np.int64)
    codes = torch.from_numpy(np.where(frames >= 2049, 0, frames).T[None].copy())
    with torch.no_grad():
        full = load_mimi(tiny_mimi).decode(codes).audio_values[0, 0].numpy()
    audio, _ = sf.read(wav, dtype="float32")
    assert np.abs(audio - np.clip(full, -1, 1)).max() < 2e-4  # int16 quantisation


def test_voice_preset_matches_reference(tiny_bundle, tiny_torch_model, tmp_path):
    voice = Voice.load(RELEASED_VOICES / "dylan.npz")
    dump_path = tmp_path / "voice.json"
    assert main(["--bundle", str(tiny_bundle), "--text", QUESTION, "--greedy", "--voice", "dylan",
                 "--max-new-tokens", "24", "--dump-codes", str(dump_path)]) == 0
    got = CodeDump.read(dump_path)
    prompt = chat_prompt_ids(voice_prompt_messages(QUESTION))
    ref = reference_generate(tiny_torch_model, prompt, 24, greedy=True, ref_codes=voice.ref_codes,
                             spk_emb=voice.spk_emb)
    assert (got.prompt_ids, got.text_ids, got.audio_codes, got.frames) == \
        (ref.prompt_ids, ref.text_ids, ref.audio_codes, ref.frames)


def test_second_turn_reuses_cache_and_equals_fresh_prefill(tiny_bundle, tiny_torch_model):
    model = OmniModel.load(tiny_bundle)
    conv = Conversation(model, context=512)
    opts = GenerationOptions(max_new_tokens=20, greedy=True)
    list(conv.respond("Hello", opts, decode_audio=False))
    second = CodeDump([])
    events = list(conv.respond("Tell me more.", opts, decode_audio=False, record=second))
    assert isinstance(events[-1], TurnEnd)
    history = [{"role": m.role, "content": m.content} for m in conv.history[:-1]]
    ref = reference_generate(tiny_torch_model, chat_prompt_ids(history), 20, greedy=True)
    assert second.prompt_ids == ref.prompt_ids
    assert (second.text_ids, second.audio_codes) == (ref.text_ids, ref.audio_codes)
    assert conv.state.reused >= 8  # at least the first turn's user message came from the cache


def test_runtime_never_imports_torch(tiny_bundle, tmp_path):
    code = (
        "import sys\n"
        "from omni_onnx.cli import main\n"
        f"rc = main(['--bundle', {str(tiny_bundle)!r}, '--text', 'hi', '--seed', '1', '--max-new-tokens', '12',"
        f" '--out', {str(tmp_path / 'a.wav')!r}])\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnxsim') if m in sys.modules]\n"
        "assert rc == 0 and not heavy, (rc, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_demo_cli_builds_a_runnable_bundle(tmp_path, caplog):
    """The demo says (export log, manifest) that its weights are random, and its random codec speaks at a
    listening level: RMS about -28 dBFS, nothing clipped (the raw random Mimi decodes far above full scale)."""
    from omni_onnx.export.cli import RANDOM_WEIGHTS_NOTICE
    from omni_onnx.export.cli import main as export_main
    caplog.set_level("INFO")
    out = tmp_path / "demo"
    assert export_main(["--demo", "--out", str(out), "--voices"]) == 0
    assert [r.getMessage() for r in caplog.records].count(RANDOM_WEIGHTS_NOTICE) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert next(iter(manifest)) == "random_weights" and manifest["random_weights"] is True
    assert main(["--bundle", str(out), "--text", "hi", "--greedy", "--max-new-tokens", "24",
                 "--out", str(tmp_path / "d.wav")]) == 0
    audio, _ = sf.read(tmp_path / "d.wav", dtype="float32")
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(audio ** 2)))
    assert len(audio) >= 4 * 1920 and -34 < rms_dbfs < -22 and np.abs(audio).max() < 0.99, (len(audio), rms_dbfs)


def test_eos_fill_and_stop_rule_match_reference(tiny_eos_checkpoint, tmp_path):
    """Text reaches EOS (then 201, 0 fill), every codebook draws a stop code, and the loop breaks early."""
    from omni_onnx.export.checkpoint import load_model
    from omni_onnx.export.cli import Sources, export_bundle
    ckpt, prompt = tiny_eos_checkpoint
    bundle = export_bundle(Sources(ckpt, voices=()), tmp_path / "b", verify=False)
    record = CodeDump([])
    events = list(Conversation(OmniModel.load(bundle)).respond(
        QUESTION, GenerationOptions(max_new_tokens=64, greedy=True), decode_audio=False, record=record))
    ref = reference_generate(load_model(ckpt), prompt, 64, greedy=True)
    assert ref.text_ids[-1] == 2 and len(ref.audio_codes[0]) < 64  # the paths under test were reached
    assert (record.prompt_ids, record.text_ids, record.audio_codes, record.frames) == \
        (ref.prompt_ids, ref.text_ids, ref.audio_codes, ref.frames)
    assert events[-1].reason == "eos"


def test_chat_mode_keeps_history_and_writes_numbered_wavs(tiny_bundle, tmp_path, monkeypatch, capsys):
    lines = iter(["Hello", "", "Tell me more.", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    out = tmp_path / "turn.wav"
    assert main(["--bundle", str(tiny_bundle), "--greedy", "--max-new-tokens", "16", "--out", str(out)]) == 0
    assert (tmp_path / "turn-1.wav").exists() and (tmp_path / "turn-2.wav").exists()
    assert capsys.readouterr().out.count("omni> ") == 2
