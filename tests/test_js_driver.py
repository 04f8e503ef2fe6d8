"""examples/js (the step protocol in JavaScript on onnxruntime-node) reproduces omni-run: prompt ids, text ids, the 8
code streams, frames, WAV bytes and the stop line, on tiny dynamic (fp32 and int8) and static bundles, greedy and
seeded, with a voice, through a context that fills up. Its numpy-equivalent pieces (PCG64 stream, byte-level BPE) are
also checked against numpy and `tokenizers` directly. The same lib in a page (examples/js/web, onnxruntime-web's
WebAssembly backend) is served from a loopback HTTP server to headless Chromium and checked against omni-run the same
way.

`npm ci` runs once per checkout (examples/js/node_modules, keyed by the lockfile's sha256); onnxruntime-node's
install script is told to skip its download, the package's bundled CPU binary is what runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import urllib.parse
from base64 import b64decode
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from omni_onnx.cli import main as omni_run
from omni_onnx.contracts import StaticShape

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "examples" / "js"
QUESTION = "Why is the sky blue?"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: tests/test_js_driver.py needs Node.js >= 20 with npm "
                    f"(Debian: apt-get install nodejs npm)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def node() -> str:
    """node, with examples/js's dependencies installed from the lockfile (once per lockfile version)."""
    node, npm = _tool("node"), _tool("npm")
    lock = hashlib.sha256((JS / "package-lock.json").read_bytes()).hexdigest()
    stamp = JS / "node_modules" / ".omni-lock-sha256"
    if not stamp.is_file() or stamp.read_text().strip() != lock:
        r = subprocess.run([npm, "ci", "--onnxruntime-node-install=skip", "--no-audit", "--no-fund"], cwd=JS,
                           capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, f"npm ci failed in {JS}:\n{r.stdout}\n{r.stderr}"
        stamp.write_text(lock + "\n")
    return node


def _bundle(checkpoint: Path, mimi: Path, out: Path, static: StaticShape | None) -> Path:
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(checkpoint, mimi), out, verify=False, static=static)


@pytest.fixture(scope="module")
def bundles(tiny_eos_checkpoint, tiny_mimi, tmp_path_factory) -> dict[str, Path]:
    """The EOS-steered tiny checkpoint (EOS, the 201/0 fill and stop codes on the path) as a dynamic bundle and a
    static one whose 8-position chunks split both prompts unevenly (23 = 8+8+7; the voice prompt's last chunk is
    one position, fed through the decode graphs)."""
    from omni_onnx.quant.cli import main as omni_quant
    root = tmp_path_factory.mktemp("js")
    ckpt = tiny_eos_checkpoint[0]
    dynamic = _bundle(ckpt, tiny_mimi, root / "dynamic", None)
    assert omni_quant([str(dynamic), "--to", "int8", "--out", str(root / "int8")]) == 0
    return {"dynamic": dynamic, "int8": root / "int8",
            "static": _bundle(ckpt, tiny_mimi, root / "static", StaticShape(context=72, prefill_chunk=8))}


CASES = [("dynamic", ["--greedy"]), ("dynamic", ["--seed", "7", "--voice", "eric"]),
         ("dynamic", ["--greedy", "--context", "33"]), ("int8", ["--seed", "7", "--voice", "eric"]),
         ("static", ["--greedy"]), ("static", ["--seed", "3", "--voice", "dylan"])]


@pytest.mark.parametrize("kind,extra", CASES, ids=["greedy", "seeded-voice", "context-full", "int8-seeded-voice",
                                                     "static-greedy", "static-seeded-voice"])
def test_js_driver_reproduces_omni_run(node, bundles, tmp_path, capsys, kind, extra):
    common = ["--bundle", str(bundles[kind]), "--text", QUESTION, "--max-new-tokens", "64", *extra]
    assert omni_run([*common, "--dump-codes", str(tmp_path / "rt.json"), "--out", str(tmp_path / "rt.wav")]) == 0
    runtime_err = capsys.readouterr().err
    r = subprocess.run([node, str(JS / "omni.mjs"), *common, "--dump-codes", str(tmp_path / "js.json"),
                        "--out", str(tmp_path / "js.wav")], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    runtime = json.loads((tmp_path / "rt.json").read_text())
    assert json.loads((tmp_path / "js.json").read_text()) == runtime
    assert (tmp_path / "js.json").read_bytes() == (tmp_path / "rt.json").read_bytes()
    assert (tmp_path / "js.wav").read_bytes() == (tmp_path / "rt.wav").read_bytes()
    assert r.stderr.strip() == runtime_err.strip()  # the same "[stopped: ...]" line, or none
    assert runtime["frames"], "the case produced no audio: it would not test the Mimi path"
    if "--context" in extra:
        assert "[stopped: context full]" in r.stderr


CHECK_RNG = """
import { Pcg64Random } from './lib/rng.mjs';
const seeds = JSON.parse(process.argv[1]);
console.log(JSON.stringify(seeds.map((s) => { const r = new Pcg64Random(BigInt(s)); return Array.from({ length: 4 }, () => r.random()); })));
"""


def test_js_rng_is_numpy_default_rng(node):
    seeds = [0, 1, 7, 123456789, 2**40 + 5, 2**70 + 3]
    r = subprocess.run([node, "--input-type=module", "-e", CHECK_RNG, json.dumps([str(s) for s in seeds])], cwd=JS,
                       capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(r.stdout) == [np.random.default_rng(s).random(4).tolist() for s in seeds]


CHECK_TOKENIZER = """
import { readFileSync } from 'node:fs';
import { Tokenizer } from './lib/tokenizer.mjs';
const tok = new Tokenizer(JSON.parse(readFileSync(process.argv[1], 'utf8')));
const texts = JSON.parse(readFileSync(0, 'utf8'));
console.log(JSON.stringify(texts.map((t) => { const ids = tok.encode(t); return [ids, tok.decode(ids)]; })));
"""

TEXTS = ["<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
         "你是一个专业的语音助手，请用给定的音色风格来回答用户的问题。", "I'm sure they'll've   three spaces\t\ttabs\n\n\n",
         " 123 4567.89 😀👍🏽 café naïve Ωμέγα русский العربية", "<|audio_pad|><|audio_pad|>\n\n<|image_pad|>",
         "a<think>b</think>c<|im_end|", "  trailing  ", ""]


def test_js_tokenizer_equals_tokenizers(node, tiny_eos_checkpoint):
    from tokenizers import Tokenizer

    from omni_onnx.export.voices import ASSETS
    path = ASSETS / "tokenizer.json"
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ 0129\n\t'sdll,.!?的是不了人我在有他<>|_😀é-")
    texts = TEXTS + ["".join(rng.choice(alphabet, int(rng.integers(0, 50)))) for _ in range(100)]
    r = subprocess.run([node, "--input-type=module", "-e", CHECK_TOKENIZER, str(path)], cwd=JS, input=json.dumps(texts),
                       capture_output=True, text=True, timeout=60, check=True)
    tok = Tokenizer.from_file(str(path))
    expected = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        expected.append([ids, tok.decode(ids, skip_special_tokens=True)])
    assert json.loads(r.stdout) == expected


class _IsolatedFiles(SimpleHTTPRequestHandler):
    """Static files with the two headers that make a page cross-origin isolated (WebAssembly threads need it)."""

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(node, bundles, tmp_path_factory):
    """http://127.0.0.1:PORT serving examples/js at /js/ and the bundles at /bundles/KIND/ (loopback only)."""
    root = tmp_path_factory.mktemp("site")
    (root / "js").symlink_to(JS)
    (root / "bundles").mkdir()
    for kind, path in bundles.items():
        (root / "bundles" / kind).symlink_to(path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_IsolatedFiles, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def page_answer(site: str, kind: str, params: dict[str, str], timeout: float = 240.0) -> dict:
    """The page's answer (window.omniResult) for one question, in a fresh headless Chromium."""
    from omni_onnx.bench.cdp import Chromium
    query = urllib.parse.urlencode({"bundle": f"/bundles/{kind}/", "autorun": "1", **params})
    with Chromium() as browser:
        browser.open(f"{site}/js/web/index.html?{query}")
        return browser.wait_for("window.omniResult", timeout, "the page's answer", poll=0.2)


BROWSER_CASES = [("dynamic", ["--greedy"], {}),
                 ("static", ["--seed", "3", "--voice", "dylan"], {"seed": "3", "voice": "dylan"})]


@pytest.mark.parametrize("kind,extra,params", BROWSER_CASES, ids=["greedy", "static-seeded-voice"])
def test_web_page_reproduces_omni_run(site, bundles, tmp_path, capsys, kind, extra, params):
    from omni_onnx.bench.cdp import chromium_path
    chromium_path()
    assert omni_run(["--bundle", str(bundles[kind]), "--text", QUESTION, "--max-new-tokens", "64", *extra,
                     "--dump-codes", str(tmp_path / "rt.json"), "--out", str(tmp_path / "rt.wav")]) == 0
    runtime_err = capsys.readouterr().err.strip()
    page = page_answer(site, kind, {"text": QUESTION, "max-new-tokens": "64", "threads": "1", **params})
    assert page["ok"], page.get("error")
    assert page["codes"].encode() == (tmp_path / "rt.json").read_bytes()
    # Mimi's float32 math differs in WebAssembly (SIMD128, no FMA) from x86's kernels: codes stay exact, samples
    # may move by one LSB after the 16-bit rounding (measured: see docs/step-protocol.md, "In a browser").
    wav, expected = b64decode(page["wav"]), (tmp_path / "rt.wav").read_bytes()
    assert wav[:44] == expected[:44]
    moved = np.abs(np.frombuffer(wav[44:], np.int16).astype(int) - np.frombuffer(expected[44:], np.int16))
    print(f"{kind}: {page['msPerStep']:.2f} ms per step in the page; WAV samples moved: max {moved.max()} LSB, "
          f"{(moved > 0).mean():.2%} of them")
    assert moved.max() <= 1
    assert (page["stop"] or "") == runtime_err
    assert json.loads(page["codes"])["frames"], "the case produced no audio: it would not test the Mimi path"
