"""The oldest onnxruntime the package allows runs the tiny dynamic bundle, fp32 and int8, and the tiny static one
(version 2: GroupQueryAttention on in-place buffers), and answers exactly as omni-run on the installed onnxruntime: before 1.32 the first call's empty cache killed it (SIGFPE in the fused cache
matmul, export/empty_past.py). The old wheel is installed once per checkout into build/ (`pip install --target`,
no dependencies: numpy and the rest come from this environment); omni-run runs on it in a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omni_onnx.cli import main as omni_run
from omni_onnx.quant.cli import main as omni_quant

ROOT = Path(__file__).resolve().parents[1]
OLDEST = "1.30.0"  # pyproject's floor
ARGS = ["--text", "Why is the sky blue?", "--seed", "7", "--voice", "eric", "--max-new-tokens", "24"]


@pytest.fixture(scope="session")
def old_onnxruntime() -> dict[str, str]:
    """Environment for a child process that imports onnxruntime OLDEST."""
    target = ROOT / "build" / f"onnxruntime-{OLDEST}"
    if not (target / "onnxruntime" / "__init__.py").is_file():
        part = target.with_name(target.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(part),
                            f"onnxruntime=={OLDEST}"], capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, f"pip could not install onnxruntime=={OLDEST}:\n{r.stderr}"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(part, target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    seen = subprocess.run([sys.executable, "-c", "import onnxruntime; print(onnxruntime.__version__)"], env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert seen == OLDEST, f"the child process imports onnxruntime {seen}, not {OLDEST}"
    return env


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tiny_static_bundle, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("old-ort") / "tiny-int8"
    assert omni_quant([str(tiny_bundle), "--to", "int8", "--out", str(out)]) == 0
    return {"fp32": tiny_bundle, "int8": out, "static": tiny_static_bundle}


@pytest.mark.parametrize("kind", ["fp32", "int8", "static"])
def test_oldest_onnxruntime_answers_as_the_installed_one(old_onnxruntime, bundles, tmp_path, kind):
    bundle = str(bundles[kind])
    assert omni_run(["--bundle", bundle, *ARGS, "--dump-codes", str(tmp_path / "new.json"),
                     "--out", str(tmp_path / "new.wav")]) == 0
    r = subprocess.run([sys.executable, "-m", "omni_onnx", "--bundle", bundle, *ARGS,
                        "--dump-codes", str(tmp_path / "old.json"), "--out", str(tmp_path / "old.wav")],
                       env=old_onnxruntime, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, f"omni-run on onnxruntime {OLDEST} exited {r.returncode}:\n{r.stderr[-2000:]}"
    assert (tmp_path / "old.json").read_bytes() == (tmp_path / "new.json").read_bytes()
    assert (tmp_path / "old.wav").read_bytes() == (tmp_path / "new.wav").read_bytes()
