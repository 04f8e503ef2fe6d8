"""The runtime-only install. `pip install omni-onnx` is served by no registry; what works is installing from the
checkout or from a wheel built from it. This builds that wheel (from a copy, so the checkout stays clean), checks it
holds the runtime, its data and the commands, and runs omni-run from it with torch, transformers and onnx made
unimportable, as on a machine that only runs bundles."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "runtime", "export", "quant", "benchmarks")
EXPORT_ONLY = ("torch", "transformers", "onnx", "onnxscript", "onnxsim", "safetensors", "huggingface_hub")

RUN_WITHOUT_EXPORT_TOOLS = """
import importlib.abc, sys
class ExportToolsAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, ExportToolsAbsent())
sys.path.insert(0, {site!r})
import omni_onnx
assert omni_onnx.__file__.startswith({site!r}), omni_onnx.__file__
from omni_onnx.cli import main
sys.exit(main({argv!r}))
"""


def test_wheel_from_the_checkout_runs_without_export_tools(tiny_bundle, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / name).is_dir() else {}))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("omni_onnx-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        z.extractall(tmp_path / "site")
    assert {f"omni_onnx/{p.name}" for p in (ROOT / "runtime").glob("*.py")} <= names
    assert {f"omni_onnx/export/assets/minimind-o/voices/{p.name}"
            for p in (ROOT / "export/assets/minimind-o/voices").glob("*.npz")} <= names
    for command in ("omni-run = omni_onnx.cli:main", "omni-voices = omni_onnx.voices_cli:main"):
        assert command in entry_points

    out = tmp_path / "reply.wav"
    argv = ["--bundle", str(tiny_bundle), "--text", "hi", "--greedy", "--max-new-tokens", "12", "--out", str(out)]
    code = RUN_WITHOUT_EXPORT_TOOLS.format(blocked=EXPORT_ONLY, site=str(tmp_path / "site"), argv=argv)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 44
