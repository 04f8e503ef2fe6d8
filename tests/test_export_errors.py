"""omni-export, omni-quant and omni-bench on bad input, Ctrl-C and a runtime-only install: for every case the exit
code, exactly one line on stderr, no traceback, and nothing clobbered (an existing --out is left byte for byte, no
staging folder is left beside it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omni_onnx import __version__
from omni_onnx.bench.cli import main as bench_main
from omni_onnx.export.cli import main as export_main
from omni_onnx.quant.cli import main as quant_main

MAINS = {"omni-export": export_main, "omni-quant": quant_main, "omni-bench": bench_main}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), and what else lies beside it."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return {**files, "<beside>": "\n".join(sorted(p.name for p in folder.parent.iterdir())).encode()}


@pytest.fixture()
def old_out(tmp_path) -> Path:
    """An earlier bundle at --out, which no failed run may touch."""
    out = tmp_path / "work" / "bundle"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text('{"earlier": true}\n')
    (out / "thinker.onnx").write_bytes(b"earlier graph")
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty.pth").write_bytes(b"")
    (root / "junk.pth").write_bytes(b"\x80\x02junk!")
    (root / "a_file").write_text("x")
    (root / "not_a_bundle").mkdir()
    (root / "not_a_bundle" / "notes.txt").write_text("mine")
    return {p.stem: p for p in root.iterdir()}


def run(capsys, command: str, *argv: str) -> tuple[int, str]:
    rc = MAINS[command](list(argv))
    return rc, capsys.readouterr().err


def assert_one_line(rc: int, err: str, want_rc: int, *needles: str) -> None:
    assert rc == want_rc, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


# (case, argv with {ckpt} {files[...]} placeholders, exit code, text the line must hold)
EXPORT_CASES = [
    ("missing checkpoint", ["--checkpoint", "/nonexistent.pth"], 1, "--checkpoint /nonexistent.pth does not exist"),
    ("empty checkpoint", ["--checkpoint", "{empty}"], 1, "the file is empty; pass upstream's"),
    ("junk checkpoint", ["--checkpoint", "{junk}"], 1, "it is not a torch or safetensors file"),
    # the paths are checked before the checkpoint is read: the junk checkpoint is not what is reported
    ("missing --mimi", ["--checkpoint", "{junk}", "--mimi", "/nonexistent"], 1, "--mimi: Mimi folder"),
    ("missing --siglip", ["--checkpoint", "{junk}", "--siglip", "/nonexistent"], 1, "--siglip: SigLIP folder"),
    ("missing --sensevoice", ["--checkpoint", "{junk}", "--sensevoice", "/nonexistent"], 1,
     "--sensevoice: SenseVoice folder"),
    ("missing --campplus", ["--checkpoint", "{junk}", "--campplus", "/nonexistent"], 1,
     "--campplus: CAM++ checkpoint"),
    ("missing --voices", ["--checkpoint", "{junk}", "--voices", "/nonexistent.pt"], 1,
     "--voices: /nonexistent.pt does not exist"),
    ("junk --voices", ["--checkpoint", "{ckpt}", "--voices", "{junk}"], 1, "cannot read voices file"),
    ("--mimi is a file", ["--checkpoint", "{ckpt}", "--mimi", "{a_file}"], 1, "--mimi: Mimi folder"),
    ("--static with --sensevoice", ["--checkpoint", "{ckpt}", "--static", "--sensevoice", "/x"], 1,
     "--static does not cover"),
]


@pytest.mark.parametrize("case, argv, want_rc, needle", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_export_bad_input(case, argv, want_rc, needle, tiny_checkpoint, files, old_out, capsys):
    before = snapshot(old_out)
    argv = [a.format(ckpt=tiny_checkpoint, **files) for a in argv]
    rc, err = run(capsys, "omni-export", *argv, "--out", str(old_out))
    assert_one_line(rc, err, want_rc, "omni-export: error:", needle)
    assert snapshot(old_out) == before


@pytest.mark.parametrize("out, needle", [("{a_file}", "is a file"), ("{not_a_bundle}", "is not a bundle")])
def test_export_refuses_an_out_that_is_not_a_bundle(out, needle, tiny_checkpoint, files, capsys):
    target = Path(out.format(**files))
    before = snapshot(target) if target.is_dir() else target.read_bytes()
    rc, err = run(capsys, "omni-export", "--checkpoint", str(tiny_checkpoint), "--out", str(target))
    assert_one_line(rc, err, 1, needle)
    assert (snapshot(target) if target.is_dir() else target.read_bytes()) == before


def test_export_parity_failure_is_one_line(tiny_checkpoint, old_out, monkeypatch, capsys):
    from omni_onnx.export import thinker
    from omni_onnx.export.common import ParityError

    def wrong(model, path):
        raise ParityError("graph thinker (seq=6 past_seq=0) differs from torch:\n- logits: max diff 0.5 = 0.005 of "
                          "its scale 100 > 0.0001\n- bridge: max diff 0.1 = 0.1 of its scale 1 > 0.0001")
    monkeypatch.setattr(thinker, "verify", wrong)
    before = snapshot(old_out)
    rc, err = run(capsys, "omni-export", "--checkpoint", str(tiny_checkpoint), "--voices", "--out", str(old_out))
    assert_one_line(rc, err, 1, "logits: max diff 0.5 = 0.005 of its scale 100 > 0.0001 (and 1 more)",
                    "--skip-verify")
    assert snapshot(old_out) == before


@pytest.mark.parametrize("stage", ["load_model", "quantize"])
def test_export_ctrl_c_writes_nothing(stage, tiny_checkpoint, old_out, monkeypatch, capsys):
    """Ctrl-C while reading the checkpoint, and after every graph was written (while quantizing): --out is the
    earlier bundle and nothing is left beside it."""
    from omni_onnx.export import checkpoint
    from omni_onnx.quant import cli as quant_cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "load_model", interrupt) if stage == "load_model" else \
        monkeypatch.setattr(quant_cli, "check_source", interrupt)
    before = snapshot(old_out)
    rc, err = run(capsys, "omni-export", "--checkpoint", str(tiny_checkpoint), "--voices", "--skip-verify",
                  "--precision", "int8", "--out", str(old_out))
    assert_one_line(rc, err, 130, "omni-export: interrupted; nothing written")
    assert snapshot(old_out) == before


def test_quant_refuses_a_quantized_bundle(tiny_bundle, tmp_path, capsys):
    src = shutil.copytree(tiny_bundle, tmp_path / "int8")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["quantization"] = {"recipe": "int8"}
    (src / "manifest.json").write_text(json.dumps(manifest))
    rc, err = run(capsys, "omni-quant", str(src), "--to", "int8", "--out", str(tmp_path / "again"))
    assert_one_line(rc, err, 1, "is already quantized (int8)", "fp32 bundle")
    assert not (tmp_path / "again").exists()


def test_quant_ctrl_c_writes_nothing(tiny_bundle, old_out, monkeypatch, capsys):
    from omni_onnx.quant import dynamic_int8
    calls = []

    def interrupt(*args, **kwargs):  # the second graph: the first one is already written
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return dynamic_int8_quantize(*args, **kwargs)
    dynamic_int8_quantize = dynamic_int8.quantize_graph
    monkeypatch.setattr(dynamic_int8, "quantize_graph", interrupt)
    before = snapshot(old_out)
    rc, err = run(capsys, "omni-quant", str(tiny_bundle), "--to", "int8", "--out", str(old_out))
    assert_one_line(rc, err, 130, "omni-quant: interrupted; nothing written")
    assert len(calls) == 2 and snapshot(old_out) == before


def test_bench_ctrl_c_and_bad_bundle_write_nothing(tiny_bundle, tmp_path, monkeypatch, capsys):
    from omni_onnx.bench import cli as bench_cli
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    before = snapshot(out)
    rc, err = run(capsys, "omni-bench", "--bundle", str(tmp_path / "nope"), "--out", str(out))
    assert_one_line(rc, err, 1, "is not a bundle")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(bench_cli.plots, "write", interrupt)  # the last step before the results are moved in
    rc, err = run(capsys, "omni-bench", "--bundle", str(tiny_bundle), "--quick", "--suite", "memory",
                  "--out", str(out))
    progress = [x for x in err.replace("\r", "\n").splitlines() if "%|" in x]  # tqdm's bar, on stderr by design
    assert_one_line(rc, "\n".join(x for x in err.replace("\r", "\n").splitlines() if x not in progress), 130,
                    "omni-bench: interrupted")
    assert progress and snapshot(out) == before


@pytest.mark.parametrize("command", sorted(MAINS))
def test_version_and_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        MAINS[command](["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"{command} {__version__}"
    with pytest.raises(SystemExit):
        MAINS[command](["--help"])
    text = capsys.readouterr().out
    assert "PosixPath" not in text and "(default: None)" not in text and "(default: False)" not in text


# A runtime-only install (`pip install .`): the export extra's and the bench extra's packages are missing.
HIDE = ("torch", "onnx", "onnxsim", "onnxscript", "transformers", "safetensors", "yaml", "jiwer", "matplotlib")
BLOCKER = f"""
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
from omni_onnx.export.cli import main as export_main
from omni_onnx.quant.cli import main as quant_main
from omni_onnx.bench.cli import main as bench_main
mains = {{"omni-export": export_main, "omni-quant": quant_main, "omni-bench": bench_main}}
sys.exit(mains[sys.argv[1]](sys.argv[2:]))
"""
RUNTIME_ONLY_CASES = [
    (["omni-export", "--demo"], 2, "omni-export needs the torch package", "pip install torch==2.13.0"),
    (["omni-quant", "{bundle}", "--to", "int8"], 2, "omni-quant needs the onnx package", "pip install 'onnx"),
    (["omni-bench", "--bundle", "{bundle}", "--suite", "quality"], 2, "needs the jiwer package", "[bench]"),
    (["omni-bench", "--bundle", "{bundle}", "--suite", "fidelity", "--checkpoint", "x.pth"], 2,
     "needs the torch package", "leave fidelity out"),
    (["omni-export", "--version"], 0, "", ""),
]


@pytest.mark.parametrize("argv, want_rc, needle, fix", RUNTIME_ONLY_CASES,
                         ids=[" ".join(c[0][:2]) + f" rc{c[1]}" for c in RUNTIME_ONLY_CASES])
def test_runtime_only_install_says_which_extra(argv, want_rc, needle, fix, tiny_bundle):
    argv = [a.format(bundle=tiny_bundle) for a in argv]
    done = subprocess.run([sys.executable, "-c", BLOCKER, *argv], capture_output=True, text=True, timeout=120)
    if want_rc == 0:
        assert done.returncode == 0 and done.stdout.strip() == f"omni-export {__version__}", done.stderr
        return
    assert_one_line(done.returncode, done.stderr, want_rc, needle, fix)
