"""Memory: the bundle's size on disk (whole and per graph) and the peak resident set of one `omni-run`-like turn.

The turn runs in a fresh Python process (`python -m omni_onnx.bench.memory`), so the peak is the runtime's alone:
not the benchmark's own imports, nor torch, nor another bundle loaded earlier in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set so far. Linux: VmHWM, the high-water mark of this address space; ru_maxrss
    would also carry the parent's resident set at fork time across exec (a torch-laden omni-bench's, here)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def disk_sizes(bundle: Path) -> dict:
    """Every file under the bundle, and each graph's file as the manifest lists it (MB = 1e6 bytes)."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    graphs = {name: (bundle / e["file"]).stat().st_size / 1e6 for name, e in manifest["graphs"].items()}
    return {"bundle_mb": total / 1e6, "graph_mb": graphs}


def one_turn(bundle: Path, max_new_tokens: int, threads: int) -> dict:
    """Load every graph of the bundle and answer one question greedily with speech, as `omni-run --audio` does (the
    spoken eval question when the bundle has a speech encoder, else its text); the peak RSS after each stage."""
    from omni_onnx.generate import GenerationOptions
    from omni_onnx.model import Conversation, OmniModel
    from omni_onnx.session import SessionOptions

    from .latency import QUESTION, SPOKEN_QUESTION

    model = OmniModel.load(bundle, SessionOptions(threads=threads))
    loaded = peak_rss_mb()
    spoken = model.speech is not None
    for _ in Conversation(model).respond(None if spoken else QUESTION, GenerationOptions(max_new_tokens, greedy=True),
                                         decode_audio=model.mimi is not None,
                                         audio=SPOKEN_QUESTION if spoken else None):
        pass
    return {"peak_rss_after_load_mb": loaded, "peak_rss_turn_mb": peak_rss_mb(), "spoken_question": spoken}


def measure(bundle: Path, max_new_tokens: int, threads: int) -> dict:
    """Disk sizes here, RSS from a child process running `one_turn`."""
    cmd = [sys.executable, "-m", "omni_onnx.bench.memory", "--bundle", str(bundle),
           "--max-new-tokens", str(max_new_tokens), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory probe failed ({' '.join(cmd)}):\n{done.stderr.strip()[-2000:]}")
    return {**disk_sizes(bundle), **json.loads(done.stdout.strip().splitlines()[-1]),
            "max_new_tokens": max_new_tokens}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_onnx.bench.memory", description=__doc__)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    print(json.dumps(one_turn(a.bundle, a.max_new_tokens, a.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
