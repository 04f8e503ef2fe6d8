"""Convert a bundle's graphs to ORT format for mobile builds of onnxruntime (`omni-export --ort`, or afterwards on
any bundle, e.g. an int8 one: `python -m omni_onnx.export.ort_format BUNDLE`).

Every graph listed in the manifest is replaced by its `.ort` form (onnxruntime's converter, "Fixed" optimization
style: optimized for the CPU execution provider at conversion time, minus the x86-only NCHWc layout, so the file
runs on ARM too). Two files are added and listed in the manifest:

- `ort_required_operators.config`: the operator set the graphs need, the input of onnxruntime's reduced build
  (`build.sh --include_ops_by_config`);
- `ort_mobile_usability.txt`: onnxruntime's mobile usability checker per graph (how NNAPI and CoreML would
  partition it, and whether the shapes are static enough for them).

The manifest's `ort` section records the onnxruntime version and style. Both tools open their own onnxruntime
sessions, which onnxruntime refuses in a process that already holds the runtime's shared thread pool, so they run
in child processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime
from omni_onnx.bundle import MANIFEST, Bundle, sha256_file
from omni_onnx.errors import OmniError

from .shared_weights import WEIGHTS_FILE

log = logging.getLogger("omni-export")

REQUIRED_OPERATORS = "ort_required_operators.config"
USABILITY_REPORT = "ort_mobile_usability.txt"
STYLE = "Fixed"


def _child(args: list[str], what: str) -> str:
    """Run a Python child process; return its output, raise ValueError on failure."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise ValueError(f"onnxruntime's {what} failed:\n{tail}")
    return done.stdout


# onnxruntime's check_onnx_model_mobile_usability, over several graphs in one process (each run loads onnxruntime)
_CHECK = """
import logging, pathlib, sys
logging.basicConfig(format="%(levelname)s:  %(message)s", stream=sys.stdout, level=logging.WARNING)
from onnxruntime.tools.mobile_helpers import usability_checker
log = logging.getLogger("check_usability")
log.setLevel(logging.INFO)
for path in sys.argv[1:]:
    print(SEP + path, flush=True)
    usability_checker.analyze_model(pathlib.Path(path), skip_optimize=False, logger=log)
"""
_SEP = "@@graph "


def usability_report(graphs: dict[str, Path]) -> str:
    """onnxruntime's mobile usability checker over each ONNX graph, one section per graph."""
    out = _child(["-c", f"SEP = {_SEP!r}\n{_CHECK}", *map(os.fspath, graphs.values())], "mobile usability checker")
    sections = []
    for (name, path), text in zip(graphs.items(), out.split(_SEP)[1:]):
        text = text.split("\n", 1)[1].replace("INFO:  ", "").strip()
        verdicts = [line.split("Model should perform well with ")[1] for line in text.splitlines()
                    if "Model should perform well with " in line]
        log.info("%s mobile usability: %s", name, "; ".join(verdicts))
        sections.append(f"## {name} ({path.name})\n\n{text}\n")
    return "\n".join(sections)


def convert_bundle(root: Path) -> dict[str, Any]:
    """Convert the bundle at `root` in place (see the module docstring); returns the manifest's new `ort` section.
    A bundle already in ORT format is left as it is."""
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    graphs = {name: root / e["file"] for name, e in manifest["graphs"].items() if e["file"].endswith(".onnx")}
    if not graphs:
        return manifest.get("ort", {})
    report = usability_report(graphs)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        src, out = Path(tmp) / "onnx", Path(tmp) / "ort"
        src.mkdir()
        for path in graphs.values():
            os.link(path, src / path.name)  # the converter takes a folder: exactly the manifest's graphs
        if (root / WEIGHTS_FILE).is_file():  # external data of a static bundle's graphs, read beside them
            os.link(root / WEIGHTS_FILE, src / WEIGHTS_FILE)
        _child(["-m", "onnxruntime.tools.convert_onnx_models_to_ort", os.fspath(src), "--output_dir", os.fspath(out),
                "--optimization_style", STYLE], "converter")
        for name, path in graphs.items():
            os.replace(out / path.with_suffix(".ort").name, path.with_suffix(".ort"))
        config = (out / "required_operators.config").read_text(encoding="utf-8")
        (root / REQUIRED_OPERATORS).write_text(config.replace(f"{out}{os.sep}", ""), encoding="utf-8")
    (root / USABILITY_REPORT).write_text(report + "\n", encoding="utf-8")
    for name, path in graphs.items():
        ort_path = path.with_suffix(".ort")
        manifest["graphs"][name].update(file=ort_path.name, sha256=sha256_file(ort_path))
        path.unlink()
    if manifest.get("files", {}).pop(WEIGHTS_FILE, None) is not None:  # each .ort file holds its weights
        (root / WEIGHTS_FILE).unlink()
    manifest.setdefault("files", {}).update({f: sha256_file(root / f) for f in (REQUIRED_OPERATORS, USABILITY_REPORT)})
    manifest["ort"] = {"onnxruntime": onnxruntime.__version__, "optimization_style": STYLE,
                       "required_operators": REQUIRED_OPERATORS, "mobile_usability": USABILITY_REPORT}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("ORT format: %d graphs converted; operators in %s, mobile usability in %s", len(graphs),
             REQUIRED_OPERATORS, USABILITY_REPORT)
    return manifest["ort"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_onnx.export.ort_format", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle folder to convert in place")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        Bundle.open(args.bundle)  # refuse a corrupted bundle before changing it
        convert_bundle(args.bundle)
        Bundle.open(args.bundle)
    except (OmniError, ValueError, OSError) as e:
        print(f"ort_format: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
