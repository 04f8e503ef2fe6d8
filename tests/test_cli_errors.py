"""Every bad input to omni-run and omni-voices (issue 14's table): a non-zero exit, exactly one line on stderr that
names the problem, no traceback, and nothing clobbered (a pre-existing --out / --dump-codes byte-identical, no new
file, no temporary file left behind). Plus what must work: transparent images, the demo notice, --version, --help."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omni_onnx.cli import main as run_main
from omni_onnx.voices_cli import main as voices_main
from test_image_preprocess import png_header_only

SPEECH = Path(__file__).parent / "fixtures" / "eval_omni" / "audio-en-04_please_introduce_spring_in_one_sentence.mp3"
LONG_QUESTION = "Why is the sky blue? " * 40  # about 200 tokens: over a 160 or 16 position context


@pytest.fixture()
def env(tiny_bundle, tiny_static_bundle, tmp_path, monkeypatch) -> dict[str, str]:
    """Paths the cases refer to as {name}; `outs/` holds the outputs that must survive a failed run."""
    monkeypatch.setenv("OMNI_ONNX_DATA", str(tmp_path / "data"))
    inputs, outs, voices = tmp_path / "in", tmp_path / "outs", tmp_path / "data" / "voices"
    for d in (inputs, outs, voices):
        d.mkdir(parents=True)
    sf.write(outs / "existing.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 24000), 24000)
    (outs / "existing.json").write_text('{"keep": "me"}\n')
    sf.write(inputs / "empty.wav", np.zeros(0), 16000)  # a 44-byte WAV holding no samples
    (inputs / "empty.mp3").write_bytes(b"")
    (inputs / "400mp.png").write_bytes(png_header_only(20000, 20000))
    (inputs / "notes.txt").write_text("not a folder\n")
    preset = tiny_bundle / "voices" / "dylan.npz"
    shutil.copy(preset, voices / "mine.npz")
    (voices / "truncated.npz").write_bytes(preset.read_bytes()[:300])
    (voices / "junk.npz").write_bytes(b"\x00junk!\x00\x01")
    return {"bundle": str(tiny_bundle), "static": str(tiny_static_bundle), "in": str(inputs), "outs": str(outs),
            "speech": str(SPEECH)}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def run(main, argv: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit code, stderr lines without the demo notice, stdout); argparse's exit counts as a return."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, [line for line in err.splitlines() if line.strip() and ": note: " not in line], out


ASK = ["--bundle", "{bundle}", "--greedy", "--max-new-tokens", "8"]
# (id, argv, exit code, what the one stderr line must say); --out and --dump-codes point at existing files unless the
# case is about them; "new" cases check that no file appears.
RUN_CASES = [
    ("audio holds no samples", ASK + ["--audio", "{in}/empty.wav", "--out", "{outs}/existing.wav"], 1,
     "holds no audio samples"),
    ("audio holds no samples, new out", ASK + ["--audio", "{in}/empty.wav", "--out", "{outs}/new.wav",
                                               "--dump-codes", "{outs}/new.json"], 1, "holds no audio samples"),
    ("0-byte mp3", ASK + ["--audio", "{in}/empty.mp3", "--out", "{outs}/existing.wav"], 1, "is empty (0 bytes)"),
    ("folder as --audio", ASK + ["--audio", "{in}", "--out", "{outs}/existing.wav"], 1, "is a folder"),
    ("missing --audio", ASK + ["--audio", "{in}/nope.wav", "--out", "{outs}/existing.wav"], 1, "does not exist"),
    ("prompt over the context", ASK + ["--text", LONG_QUESTION, "--context", "16", "--out", "{outs}/existing.wav",
                                       "--dump-codes", "{outs}/existing.json"], 1, "raise --context"),
    ("prompt over the context, new out", ASK + ["--text", LONG_QUESTION, "--context", "16",
                                                "--out", "{outs}/new.wav"], 1, "raise --context"),
    ("folder as --out", ASK + ["--text", "hi", "--out", "{outs}"], 1, "--out {outs} is a folder"),
    ("--out reply.mp3", ASK + ["--text", "hi", "--out", "{outs}/reply.mp3"], 1, "writes WAV only"),
    ("--out in a missing folder", ASK + ["--text", "hi", "--out", "{outs}/nope/a.wav"], 1, "does not exist"),
    ("--out under a file", ASK + ["--text", "hi", "--out", "{in}/notes.txt/a.wav"], 1, "notes.txt is a file, not a"),
    ("unwritable --out", ASK + ["--text", "hi", "--out", "/proc/omni-onnx-reply.wav"], 1, "cannot write --out"),
    ("folder as --dump-codes", ASK + ["--text", "hi", "--dump-codes", "{outs}"], 1, "--dump-codes {outs} is a folder"),
    ("--max-new-tokens 0", ["--bundle", "{bundle}", "--text", "hi", "--max-new-tokens", "0"], 2,
     "--max-new-tokens: must be at least 1"),
    ("--threads -3", ASK + ["--text", "hi", "--threads", "-3"], 2, "--threads: must be at least 0"),
    ("--context 8", ASK + ["--text", "hi", "--context", "8"], 2, "--context: must be at least 16"),
    ("--top-p 0", ASK + ["--text", "hi", "--top-p", "0"], 2, "--top-p: must be in (0, 1]"),
    ("--temperature -1", ASK + ["--text", "hi", "--temperature", "-1"], 2, "--temperature: must be at least 0"),
    ("--threads x", ASK + ["--text", "hi", "--threads", "x"], 2, "--threads: expected a whole number"),
    ("unknown flag", ASK + ["--text", "hi", "--loud"], 2, "unrecognized arguments: --loud"),
    ("400 MP image", ASK + ["--text", "hi", "--image", "{in}/400mp.png"], 1, "20000x20000 (400.0 MP)"),
    ("folder as --image", ASK + ["--text", "hi", "--image", "{in}"], 1, "is a folder"),
    ("unknown voice", ASK + ["--text", "hi", "--voice", "nobody", "--out", "{outs}/existing.wav"], 1,
     "unknown voice 'nobody'"),
    ("truncated user voice", ASK + ["--text", "hi", "--voice", "truncated", "--out", "{outs}/existing.wav"], 1,
     "truncated.npz is damaged"),
    ("junk user voice", ASK + ["--text", "hi", "--voice", "junk", "--out", "{outs}/existing.wav"], 1,
     "junk.npz is damaged"),
    ("static: --audio", ["--bundle", "{static}", "--audio", "{speech}", "--out", "{outs}/existing.wav"], 1,
     "a static bundle cannot hold the speech encoder"),
    ("static: --context", ["--bundle", "{static}", "--text", "hi", "--context", "4096"], 1,
     "context is fixed at 160"),
    ("static: prompt over the context", ["--bundle", "{static}", "--text", LONG_QUESTION, "--greedy",
                                         "--out", "{outs}/existing.wav"], 1, "--static --context 1024"),
]

VOICES_CASES = [
    ("add: empty name", ["add", "  ", "{speech}", "--bundle", "{bundle}"], 1, "the voice name is empty"),
    ("add: existing name", ["add", "mine", "{speech}", "--bundle", "{bundle}"], 1, "add --force"),
    ("add: a preset's name", ["add", "dylan", "{speech}", "--bundle", "{bundle}"], 1, "already a preset"),
    ("remove: a preset", ["remove", "dylan", "--bundle", "{bundle}"], 1, "'dylan' is a preset"),
    ("remove: unknown", ["remove", "nobody", "--bundle", "{bundle}"], 1, "no user voice 'nobody'"),
    ("add: --threads -3", ["add", "x", "{speech}", "--threads", "-3"], 2, "--threads: must be at least 0"),
]


def check_case(main, prog, argv, code, needle, env, capsys):
    argv = [a.format(**env) for a in argv]
    outs = Path(env["outs"])
    before = snapshot(outs)
    rc, err, _ = run(main, argv, capsys)
    assert rc == code, (rc, err)
    assert len(err) == 1, err
    assert err[0].startswith(prog) and ": error: " in err[0] and needle.format(**env) in err[0], err[0]
    assert "Traceback" not in err[0]
    assert snapshot(outs) == before  # nothing clobbered, nothing new, no temporary file left


@pytest.mark.parametrize("argv, code, needle", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_omni_run_bad_input(argv, code, needle, env, capsys):
    check_case(run_main, "omni-run", argv, code, needle, env, capsys)


@pytest.mark.parametrize("argv, code, needle", [c[1:] for c in VOICES_CASES], ids=[c[0] for c in VOICES_CASES])
def test_omni_voices_bad_input(argv, code, needle, env, capsys):
    before = snapshot(Path(env["outs"]).parent / "data" / "voices")
    check_case(voices_main, "omni-voices", argv, code, needle, env, capsys)
    assert snapshot(Path(env["outs"]).parent / "data" / "voices") == before


def test_voice_list_marks_damaged_voices(env, capsys):
    rc, err, out = run(voices_main, ["list", "--bundle", env["bundle"]], capsys)
    assert rc == 0 and err == []
    lines = out.splitlines()
    assert "mine\tuser" in lines and "dylan\tpreset" in lines
    assert "truncated\tuser\t(damaged: re-add it with --force, or remove it)" in lines
    assert "junk\tuser\t(damaged: re-add it with --force, or remove it)" in lines
    assert voices_main(["remove", "junk"]) == 0 and not (Path(env["outs"]).parent / "data/voices/junk.npz").exists()


def test_a_good_run_replaces_the_old_files_whole(env, capsys, tiny_bundle):
    outs = Path(env["outs"])
    rc, err, _ = run(run_main, ["--bundle", env["bundle"], "--text", "hi", "--greedy", "--max-new-tokens", "8",
                                "--out", str(outs / "existing.wav"), "--dump-codes", str(outs / "existing.json")],
                     capsys)
    assert rc == 0 and err == ["[stopped: max-new-tokens reached]"]
    frames = json.loads((outs / "existing.json").read_text())["frames"]
    assert sf.info(outs / "existing.wav").frames == 1920 * len(frames)
    assert sorted(p.name for p in outs.iterdir()) == ["existing.json", "existing.wav"]


def test_demo_bundle_says_so_once(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMNI_ONNX_DATA", str(tmp_path / "data"))
    demo = tmp_path / "demo"
    shutil.copytree(tiny_bundle, demo)
    manifest = json.loads((demo / "manifest.json").read_text())
    (demo / "manifest.json").write_text(json.dumps({**manifest, "random_weights": True}))
    for main, argv in ((run_main, ["--bundle", str(demo), "--text", "hi", "--greedy", "--max-new-tokens", "4"]),
                       (run_main, ["--bundle", str(demo), "--list-voices"]),
                       (voices_main, ["list", "--bundle", str(demo)])):
        assert main(argv) == 0
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[stopped")]
        assert len(err) == 1 and "random weights" in err[0] and "omni-export --from-hub" in err[0], err
    assert run_main(["--bundle", str(tiny_bundle), "--list-voices"]) == 0
    assert capsys.readouterr().err == ""  # an exported bundle has no notice


@pytest.mark.parametrize("main, prog", [(run_main, "omni-run"), (voices_main, "omni-voices")])
def test_version_and_help(main, prog, capsys):
    from omni_onnx import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"{prog} {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "PosixPath" not in text
    for paragraph in text.split("\n  -"):
        assert paragraph.count("default") <= 1, paragraph


def test_sigterm_while_writing_leaves_the_old_file(env):
    """SIGTERM after a few frames: exit 143 with one line; the old --out is untouched and no temporary file stays."""
    outs = Path(env["outs"])
    before = snapshot(outs)
    argv = ["--bundle", env["bundle"], "--text", "hi", "--greedy", "--max-new-tokens", "40",
            "--out", str(outs / "existing.wav")]
    code = ("import os, signal, sys\n"
            "from omni_onnx import audio_out\n"
            "from omni_onnx.cli import main\n"
            "write = audio_out.WavWriter.write\n"
            "def write_then_terminate(self, pcm):\n"
            "    write(self, pcm)\n"
            "    if self.samples >= 3 * 1920:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "audio_out.WavWriter.write = write_then_terminate\n"
            f"sys.exit(main({argv!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 143 and r.stderr.strip() == "[terminated]", r.stderr
    assert snapshot(outs) == before


def test_two_runs_writing_one_out_each_leave_a_complete_file(env, capsys):
    """Both exit 0; the file is exactly one run's answer (with temp file + rename, never a splice of both)."""
    outs = Path(env["outs"])
    ask = ["--bundle", env["bundle"], "--text", "hi", "--max-new-tokens", "24"]
    for seed in (1, 2):  # each answer alone, for reference
        assert run_main(ask + ["--seed", str(seed), "--out", str(outs / f"alone{seed}.wav")]) == 0
    runs = [subprocess.Popen([sys.executable, "-m", "omni_onnx", *ask, "--seed", str(seed),
                              "--out", str(outs / "shared.wav")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for seed in (1, 2)]
    assert [p.wait(timeout=300) for p in runs] == [0, 0], [p.stderr.read() for p in runs]
    shared = (outs / "shared.wav").read_bytes()
    assert shared in ((outs / "alone1.wav").read_bytes(), (outs / "alone2.wav").read_bytes())
    assert sorted(p.name for p in outs.iterdir()) == ["alone1.wav", "alone2.wav", "existing.json", "existing.wav",
                                                      "shared.wav"]
