"""Memory: the bundle's size on disk (whole and per graph), the peak resident set of one `omni-run`-like turn (as
the runtime runs it, and with every graph a turn can use loaded first), and the resident set each graph adds.

Each figure comes from a fresh Python process (`python -m omni_onnx.bench.memory`), so it is the runtime's alone:
not the benchmark's own imports, nor torch, nor another bundle loaded earlier in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def _status_mb(field: str) -> float | None:
    """A line of /proc/self/status in MB (Linux); None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set so far. Linux: VmHWM, the high-water mark of this address space; ru_maxrss
    would also carry the parent's resident set at fork time across exec (a torch-laden omni-bench's, here)."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def _reset_peak() -> bool:
    """Set VmHWM back to the current resident set (Linux: clear_refs 5), so the next peak is one stage's alone."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def disk_sizes(bundle: Path) -> dict:
    """Every file under the bundle, and each graph's file as the manifest lists it (MB = 1e6 bytes)."""
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    graphs = {name: (bundle / e["file"]).stat().st_size / 1e6 for name, e in manifest["graphs"].items()}
    return {"bundle_mb": total / 1e6, "graph_mb": graphs}


def one_turn(bundle: Path, max_new_tokens: int, threads: int, every_graph: bool) -> dict:
    """Load the bundle as `omni-run` does (with `every_graph`, also the graphs a turn loads on first use: vision)
    and answer one question greedily with speech, as `omni-run --audio` does (the spoken eval question when the
    bundle has a speech encoder, else its text); the peak RSS after each stage."""
    from omni_onnx.generate import GenerationOptions
    from omni_onnx.model import Conversation, OmniModel
    from omni_onnx.session import SessionOptions

    from .latency import QUESTION, SPOKEN_QUESTION

    model = OmniModel.load(bundle, SessionOptions(threads=threads))
    if every_graph:
        model.vision  # noqa: B018 (loads it)
    loaded = peak_rss_mb()
    spoken = model.speech is not None
    for _ in Conversation(model).respond(None if spoken else QUESTION, GenerationOptions(max_new_tokens, greedy=True),
                                         decode_audio=model.mimi is not None,
                                         audio=SPOKEN_QUESTION if spoken else None):
        pass
    return {"peak_rss_after_load_mb": loaded, "peak_rss_turn_mb": peak_rss_mb(), "spoken_question": spoken}


def graph_residency(bundle: Path, threads: int) -> dict:
    """Where the resident set goes: the process before any graph (Python, numpy, onnxruntime, tokenizer), then
    each graph of the bundle opened in turn, as the runtime opens it, and kept open: the resident set it adds, and
    how far above the process's earlier resident set the peak went while it opened (parse, initializer copies,
    prepacking)."""
    from omni_onnx.bundle import Bundle
    from omni_onnx.model import graph_options
    from omni_onnx.prompt import TextTokenizer
    from omni_onnx.session import GraphSession, SessionOptions

    b = Bundle.open(bundle)
    TextTokenizer(b.root / "tokenizer.json")
    base = _status_mb("VmRSS")
    graphs, kept = {}, []
    for name in b.specs:
        before = _status_mb("VmRSS")
        reset = _reset_peak()
        kept.append(GraphSession(b.graph_path(name), b.specs[name], graph_options(name, SessionOptions(threads))))
        graphs[name] = {"resident_mb": _status_mb("VmRSS") - before,
                        "opening_peak_mb": peak_rss_mb() - before if reset else None}
    return {"process_mb": base, "graphs": graphs}


def _child(bundle: Path, args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "omni_onnx.bench.memory", "--bundle", str(bundle), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory probe failed ({' '.join(cmd)}):\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(bundle: Path, max_new_tokens: int, threads: int) -> dict:
    """Disk sizes here; each RSS figure from a child process of its own: a turn as `omni-run` runs it, the same turn
    with every graph it can use loaded first, and the resident set per graph."""
    common = ["--max-new-tokens", str(max_new_tokens), "--threads", str(threads)]
    runtime = _child(bundle, common)
    every = _child(bundle, [*common, "--every-graph"])
    return {**disk_sizes(bundle), **runtime, "every_graph": every,
            "residency": _child(bundle, [*common, "--per-graph"]), "max_new_tokens": max_new_tokens}


def memory_rows(mem: dict, fmt) -> list[str]:
    """The peak-RSS rows of the results table (`fmt`: the number format of the other rows)."""
    question = "spoken" if mem["spoken_question"] else "text"
    every, res = mem["every_graph"], mem["residency"]
    per_graph = ", ".join(f"{g} {fmt(v['resident_mb'])}"
                          + (f" ({fmt(v['opening_peak_mb'])})" if v["opening_peak_mb"] is not None else "")
                          for g, v in res["graphs"].items())
    return [f"| peak RSS, a {question} question as omni-run runs it (vision and voice cloning load on first use): "
            f"after loading / after the turn, MB | {fmt(mem['peak_rss_after_load_mb'])} / "
            f"{fmt(mem['peak_rss_turn_mb'])} |",
            f"| peak RSS with every graph a turn can use loaded first (vision too): after loading / after one "
            f"{question} question, MB | {fmt(every['peak_rss_after_load_mb'])} / {fmt(every['peak_rss_turn_mb'])} |",
            f"| resident before any graph (Python, numpy, onnxruntime, tokenizer), MB | {fmt(res['process_mb'])} |",
            f"| resident each graph adds, MB (peak over the earlier resident set while it opens) | {per_graph} |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_onnx.bench.memory", description=__doc__)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every-graph", action="store_true", help="also load the graphs a turn loads on first use")
    p.add_argument("--per-graph", action="store_true", help="the resident set each graph adds, no turn")
    a = p.parse_args(argv)
    print(json.dumps(graph_residency(a.bundle, a.threads) if a.per_graph else
                     one_turn(a.bundle, a.max_new_tokens, a.threads, a.every_graph)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
