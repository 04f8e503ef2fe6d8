"""`omni-bench`: latency, memory and quality of one or more bundles in one command, written as results.json,
results.md and (when matplotlib is installed) PNG plots.

    omni-bench --bundle bundles/fp32 --bundle bundles/int8 --out benchmarks/results/run
    omni-bench --quick                   # tiny step counts: a smoke run of every suite on the default bundle

Only ORT runs here (no torch): the torch-vs-ORT comparison is `python -m omni_onnx.bench` (see README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import quality
from .machine import describe

SUITES = ("latency", "memory", "quality")


@dataclass(frozen=True)
class Plan:
    """How much work each suite does: the full run, or `--quick` (a smoke run in seconds on a tiny bundle)."""
    contexts: tuple[int, ...]
    steps: int
    max_new_tokens: int
    questions: int | None  # None: every eval question

    @classmethod
    def of(cls, quick: bool) -> Plan:
        return cls((8, 32), 5, 24, 2) if quick else cls((64, 256, 1024), 50, 256, None)


def bundle_identity(root: Path) -> dict:
    """What the figures were measured on: manifest hash, per-graph sha256 and the weights it was exported from."""
    raw = (root / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    return {"path": str(root), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "graphs_sha256": {k: v["sha256"] for k, v in manifest["graphs"].items()},
            "source": manifest.get("source"), "package_version": manifest.get("package_version")}


class Progress:
    """tqdm when installed, else one line per finished unit of work."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="omni-bench", unit="task")
        except ImportError:
            self.bar, self.total, self.done = None, total, 0

    def __call__(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
        else:
            self.done += 1
            print(f"omni-bench: {self.done}/{self.total}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_bundle(root: Path, suites: tuple[str, ...], plan: Plan, threads: int, progress: Progress) -> dict:
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    from . import latency, memory

    out: dict = {"bundle": bundle_identity(root)}
    model = OmniModel.load(root, SessionOptions(threads=threads))
    if "latency" in suites:
        out["latency"] = latency.bench_bundle(model, plan.contexts, plan.steps, plan.max_new_tokens, progress)
    if "memory" in suites:
        out["memory"] = memory.measure(root, plan.max_new_tokens, threads)
        progress()
    if "quality" in suites:
        questions = quality.eval_questions()[:plan.questions]
        out["quality"] = quality.consistency(model, questions, plan.max_new_tokens, progress)
    return out


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [(f"CPU: {m['cpu']} ({', '.join(m['cpu_flags']) or 'no AVX flags'}), {m['threads']} threads, "
              f"onnxruntime {m['versions']['onnxruntime']}{' (quick run)' if results['quick'] else ''}"), ""]
    for r in results["bundles"]:
        b = r["bundle"]
        lines += [f"## {b['path']}", "", f"weights: `{json.dumps(b['source'])}`", "", "| what | value |", "|---|---|"]
        if "latency" in r:
            lat = r["latency"]
            for past, s in lat["steps"].items():
                lines += [f"| prefill {past} positions, ms (median) | {fmt(s['ort_prefill']['median_ms'])} |",
                          (f"| Thinker+Talker step at context {past}, ms (median / p90) | "
                           f"{fmt(s['ort_step']['median_ms'])} / {fmt(s['ort_step']['p90_ms'])} |")]
            for key, label in (("mimi_frame", "Mimi frame (80 ms audio), ms"), ("sensevoice_3s", "SenseVoice 3 s, ms"),
                               ("vision_image", "SigLIP + projector, one image, ms")):
                if key in lat:
                    lines.append(f"| {label} | {fmt(lat[key]['median_ms'])} |")
            a = lat["answer"]
            lines += [(f"| time to first text / first audio, ms | {fmt(a['time_to_first_text_ms'])} / "
                       f"{fmt(a['time_to_first_audio_ms'])} |"), f"| real-time factor | {fmt(a['real_time_factor'])} |"]
        if "memory" in r:
            mem = r["memory"]
            lines += [f"| bundle on disk, MB | {fmt(mem['bundle_mb'])} |",
                      *(f"| {g}.onnx, MB | {fmt(v)} |" for g, v in mem["graph_mb"].items()),
                      (f"| peak RSS after load / after one turn, MB | {fmt(mem['peak_rss_after_load_mb'])} / "
                       f"{fmt(mem['peak_rss_turn_mb'])} |")]
        if "quality" in r:
            q, p = r["quality"], r["quality"]["paper"]
            lines += [(f"| Thinker–Talker CER, mean ({q['scored']}/{q['prompts']} prompts) / corpus | "
                       f"{fmt(q['cer_mean'])} / {fmt(q['cer_corpus'])} (paper: {p['dense']['cer']} dense, "
                       f"{p['moe']['cer']} MoE) |"),
                      (f"| voice-clone similarity | n/a, {q['similarity_note']} (paper: {p['dense']['similarity']} "
                       f"dense, {p['moe']['similarity']} MoE) |")]
        lines.append("")
    lines.append("Random weights give meaningless quality figures; the `weights` line says what each bundle holds.")
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> list[str]:
    """Step latency by context length per bundle; [] when matplotlib is missing (it is not a dependency)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    runs = [r for r in results["bundles"] if "latency" in r]
    if runs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in runs:
            steps = r["latency"]["steps"]
            ax.plot([int(k) for k in steps], [s["ort_step"]["median_ms"] for s in steps.values()], "o-",
                    label=Path(r["bundle"]["path"]).name)
        ax.set(xlabel="context (positions)", ylabel="Thinker+Talker step, ms (median)", xscale="log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "step_latency.png", dpi=120)
        plt.close(fig)
        written.append("step_latency.png")
    return written


def main(argv: list[str] | None = None) -> int:
    from omni_onnx.bundle import default_bundle_dir

    p = argparse.ArgumentParser(prog="omni-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, action="append", help="a bundle to measure (repeatable; default: the "
                   "omni-export cache location)")
    p.add_argument("--suite", default=",".join(SUITES), help=f"comma-separated, of: {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true", help="tiny step counts (a smoke run, seconds on a tiny bundle)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/omni-bench"))
    a = p.parse_args(argv)
    suites = tuple(s.strip() for s in a.suite.split(",") if s.strip())
    unknown = sorted(set(suites) - set(SUITES))
    if unknown or not suites:
        p.error(f"unknown suite(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SUITES)}")
    bundles = a.bundle or [default_bundle_dir()]
    for b in bundles:
        if not (b / "manifest.json").is_file():
            p.error(f"{b} is not a bundle (no manifest.json); build one with omni-export, or pass --bundle DIR")
    plan = Plan.of(a.quick)
    questions = plan.questions or len(quality.eval_questions())
    per_bundle = (len(plan.contexts) + 1) * ("latency" in suites) + ("memory" in suites) + \
        questions * ("quality" in suites)
    progress = Progress(per_bundle * len(bundles))
    t0 = time.perf_counter()
    try:
        runs = [run_bundle(b, suites, plan, a.threads, progress) for b in bundles]
    finally:
        progress.close()
    results = {"machine": describe(a.threads), "quick": a.quick, "suites": list(suites),
               "plan": asdict(plan), "seconds": time.perf_counter() - t0, "bundles": runs}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = markdown(results)
    (a.out / "results.md").write_text(table, encoding="utf-8")
    print(table)
    pngs = plots(results, a.out)
    print(f"plots: {', '.join(pngs)}" if pngs else "plots skipped: matplotlib is not installed "
          "(pip install matplotlib to get them)")
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
