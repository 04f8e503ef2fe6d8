"""examples/reference_driver.py (onnxruntime + numpy + tokenizers only) reproduces omni-run's ids, codes and WAV,
and docs/step-protocol.md cannot drift: its I/O tables are rendered from runtime/contracts.py and its worked example
is the driver's trace on the tiny bundle below.

The bundle is the tiny checkpoint steered to reach EOS and stop codes (conftest), so the 201/0 fill and the stop
rule are on the path; the voice and sampled runs give varied codes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from omni_onnx.cli import main as omni_run
from omni_onnx.config import TINY
from omni_onnx.contracts import (PREFILL_SUFFIX, GraphSpec, MimiDims, audio_projector_spec, mimi_decoder_spec,
                                 sensevoice_spec, static_spec, talker_spec, thinker_spec, vision_spec)

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "examples" / "reference_driver.py"
DOC = ROOT / "docs" / "step-protocol.md"
QUESTION = "Why is the sky blue?"
WORKED_EXAMPLE_ARGS = ["--text", QUESTION, "--greedy", "--max-new-tokens", "64"]

# The child refuses to import our package (a None entry in sys.modules makes `import` raise), then checks that
# nothing heavier than the three allowed dependencies was loaded.
CHILD = """
import runpy, sys
sys.modules["omni_onnx"] = None
sys.argv = [sys.argv[1]] + sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    rc = 0
except SystemExit as e:
    rc = e.code or 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "soundfile", "onnx"})
assert not heavy, heavy
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def eos_bundle(tiny_eos_checkpoint, tiny_mimi, tmp_path_factory) -> Path:
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(tiny_eos_checkpoint[0], tiny_mimi), tmp_path_factory.mktemp("driver") / "b",
                         verify=False)


def run_driver(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", CHILD, str(DRIVER), "--bundle", str(bundle), *args],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("extra", [["--greedy"], ["--greedy", "--voice", "dylan"], ["--seed", "7", "--voice", "eric"],
                                   ["--greedy", "--context", "30"]],
                         ids=["greedy", "voice", "sampled", "context-full"])
def test_driver_reproduces_runtime(eos_bundle, tmp_path, capsys, extra):
    common = ["--text", QUESTION, "--max-new-tokens", "64", *extra]
    assert omni_run(["--bundle", str(eos_bundle), *common, "--dump-codes", str(tmp_path / "rt.json"),
                     "--out", str(tmp_path / "rt.wav")]) == 0
    runtime_err = capsys.readouterr().err
    r = run_driver(eos_bundle, *common, "--dump-codes", str(tmp_path / "drv.json"), "--out", str(tmp_path / "drv.wav"))
    runtime, driver = (json.loads((tmp_path / f).read_text()) for f in ("rt.json", "drv.json"))
    assert driver == runtime
    assert (tmp_path / "drv.wav").read_bytes() == (tmp_path / "rt.wav").read_bytes()
    assert r.stderr.strip() == runtime_err.strip()  # same "[stopped: ...]" line, or none
    if extra == ["--greedy"]:  # the paths under test were reached
        assert driver["text_ids"][-1] == 2 and len(driver["audio_codes"][0]) < 64 and driver["frames"]
        assert r.stderr == ""
    if "--context" in extra:
        assert "[stopped: context full]" in r.stderr


def test_driver_imports_only_its_three_dependencies():
    import ast
    tree = ast.parse(DRIVER.read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    third_party = imported - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "onnxruntime", "tokenizers"}


def test_doc_worked_example_is_the_driver_trace(eos_bundle):
    r = run_driver(eos_bundle, *WORKED_EXAMPLE_ARGS, "--trace", "20")
    trace = "\n".join(line for line in r.stdout.splitlines() if line.startswith("|"))
    doc = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- worked-example -->\n(.*?)\n<!-- /worked-example -->", doc, re.DOTALL)
    assert block is not None, "docs/step-protocol.md lost its worked-example markers"
    assert block.group(1).strip() == trace, (
        f"the worked example in {DOC.name} is stale; replace the table with this driver output:\n{trace}")


# --- the I/O tables of docs/step-protocol.md, rendered from the contracts with every dimension named ------------

CONFIG_DIMS = ("hidden_size", "num_key_value_heads", "head_dim", "vocab_size", "num_codebooks", "audio_vocab_size",
               "spk_emb_size", "talker_num_key_value_heads", "talker_head_dim", "audio_hidden_size",
               "image_token_len")
MIMI_DIMS = ("num_heads", "head_dim", "kv_window", "num_codebooks", "frame_samples", "steps_per_frame")


def _named_specs() -> tuple[list[GraphSpec], dict[int, str]]:
    """The contracts built from dimensions set to distinct sentinel numbers, and each number's manifest name."""
    names: dict[int, str] = {}

    def sentinel(name: str) -> int:
        value = 100_003 + 10 * len(names)
        names[value] = name
        return value

    cfg = dataclasses.replace(TINY, num_hidden_layers=2, num_talker_hidden_layers=3,
                              **{f: sentinel(f) for f in CONFIG_DIMS})
    mimi = MimiDims(num_layers=4, conv_states=((sentinel("mimi.conv_states[j][0]"),
                                                sentinel("mimi.conv_states[j][1]")),) * 5,
                    **{f: sentinel(f"mimi.{f}") for f in MIMI_DIMS})
    specs = [thinker_spec(cfg), talker_spec(cfg), mimi_decoder_spec(mimi),
             audio_projector_spec(cfg), vision_spec(cfg, sentinel("vision.image_size")),
             sensevoice_spec(sentinel("speech.vocab_size"), sentinel("speech.output_size"),
                             sentinel("speech.feature_dim"))]
    return specs, names


LAYER_COUNTS = {"thinker": "num_hidden_layers", "talker": "num_talker_hidden_layers", "mimi_decoder": "mimi.num_layers",
                "thinker_prefill": "num_hidden_layers", "talker_prefill": "num_talker_hidden_layers"}


def render_contract(spec: GraphSpec, names: dict[int, str]) -> str:
    """Markdown tables of one graph's inputs and outputs; per-layer tensors collapse into one row."""
    lines = []
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        lines += ["", f"| {kind} | dtype | shape |", "|---|---|---|"]
        done = set()
        for t in tensors:
            shape = "[" + ", ".join(names.get(d, str(d)) if isinstance(d, int) else d for d in t.dims) + "]"
            m = re.fullmatch(r"(past|present)_(key|value|conv)_\d+", t.name)
            if m is None:
                lines.append(f"| `{t.name}` | {t.dtype} | {shape} |")
            elif (m.group(1), m.group(2)) in done:
                continue
            elif m.group(2) == "conv":
                done.add((m.group(1), "conv"))
                lines.append(f"| `{m.group(1)}_conv_{{j}}`, j < len(mimi.conv_states) | {t.dtype} | {shape} |")
            elif m.group(2) == "key":
                done.add((m.group(1), "key"))
                lines.append(f"| `{m.group(1)}_key_{{i}}`, `{m.group(1)}_value_{{i}}`, i < {LAYER_COUNTS[spec.graph]} "
                             f"| {t.dtype} | {shape} |")
    return "\n".join(lines[1:])


def test_doc_tables_match_contracts():
    doc = DOC.read_text(encoding="utf-8")
    specs, names = _named_specs()
    for spec in specs:
        block = re.search(rf"<!-- contract:{spec.graph} v(\d+) -->\n(.*?)\n<!-- /contract -->", doc, re.DOTALL)
        expected = render_contract(spec, names)
        assert block is not None, f"docs/step-protocol.md has no table for {spec.graph}; add:\n{expected}"
        assert (int(block.group(1)), block.group(2).strip()) == (spec.version, expected), (
            f"the {spec.graph} table in {DOC.name} differs from runtime/contracts.py; replace it with "
            f"<!-- contract:{spec.graph} v{spec.version} -->\n{expected}\n<!-- /contract -->")


def _named_static_specs() -> tuple[list[GraphSpec], dict[int, str]]:
    """A static bundle's decode and prefill contracts (section 12), from the dynamic ones as the exporter derives
    them, with `static.context` and `static.prefill_chunk` as sentinels."""
    specs, names = _named_specs()
    context, chunk = 100_001, 100_002
    names |= {context: "static.context", chunk: "static.prefill_chunk"}
    dynamic = [s for s in specs if s.graph in ("thinker", "talker")]
    out = [static_spec(s, context, 1, s.graph) for s in dynamic]
    out += [static_spec(s, context, chunk, s.graph + PREFILL_SUFFIX) for s in dynamic]
    return out, names


def test_doc_static_tables_match_contracts():
    doc = DOC.read_text(encoding="utf-8")
    specs, names = _named_static_specs()
    for spec in specs:
        block = re.search(rf"<!-- contract:static/{spec.graph} v(\d+) -->\n(.*?)\n<!-- /contract -->", doc, re.DOTALL)
        expected = render_contract(spec, names)
        assert block is not None, f"docs/step-protocol.md has no static table for {spec.graph}; add:\n{expected}"
        assert (int(block.group(1)), block.group(2).strip()) == (spec.version, expected), (
            f"the static {spec.graph} table in {DOC.name} differs from runtime/contracts.py; replace it with "
            f"<!-- contract:static/{spec.graph} v{spec.version} -->\n{expected}\n<!-- /contract -->")


# --- an older onnxruntime (what apps ship) on the dynamic bundle: section 3's workaround, measured bytes ------------

OLD_ONNXRUNTIME = "1.31.1"  # the newest onnxruntime-node on npm; its kernels die on the zero-length past (section 3)


@pytest.fixture(scope="session")
def old_onnxruntime() -> Path:
    """onnxruntime OLD_ONNXRUNTIME in build/ (gitignored), installed once per checkout without dependencies (the
    test's own numpy serves it)."""
    target = ROOT / "build" / f"onnxruntime-{OLD_ONNXRUNTIME}"
    if not (target / "onnxruntime" / "__init__.py").is_file():
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                            f"onnxruntime=={OLD_ONNXRUNTIME}"], capture_output=True, text=True, timeout=600,
                           check=False)
        assert r.returncode == 0, f"pip could not install onnxruntime=={OLD_ONNXRUNTIME}:\n{r.stderr}"
    return target


def test_driver_on_older_onnxruntime_reproduces_runtime(eos_bundle, old_onnxruntime, tmp_path, capsys):
    common = ["--text", QUESTION, "--max-new-tokens", "64", "--seed", "7", "--voice", "eric"]
    assert omni_run(["--bundle", str(eos_bundle), *common, "--dump-codes", str(tmp_path / "rt.json"),
                     "--out", str(tmp_path / "rt.wav")]) == 0
    capsys.readouterr()
    env = {**os.environ, "PYTHONPATH": str(old_onnxruntime)}
    version = subprocess.run([sys.executable, "-c", "import onnxruntime; print(onnxruntime.__version__)"], env=env,
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert version == OLD_ONNXRUNTIME
    r = subprocess.run([sys.executable, str(DRIVER), "--bundle", str(eos_bundle), *common, "--dump-codes",
                        str(tmp_path / "old.json"), "--out", str(tmp_path / "old.wav")], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"onnxruntime {OLD_ONNXRUNTIME} failed (rc {r.returncode}):\n{r.stderr}"
    assert (tmp_path / "old.json").read_bytes() == (tmp_path / "rt.json").read_bytes()
    assert (tmp_path / "old.wav").read_bytes() == (tmp_path / "rt.wav").read_bytes()
