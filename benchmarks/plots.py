"""PNG plots of an omni-bench run (matplotlib, optional: the `bench` extra): the per-step latency distribution, the
time-to-first-audio breakdown, and speed vs precision (one bar group per bundle)."""

from __future__ import annotations

from pathlib import Path

from .latency import STAGES


def label(run: dict) -> str:
    b = run["bundle"]
    return f"{Path(b['path']).name} ({b['precision']})"


def step_distribution(plt, runs: list[dict], out: Path) -> str:
    """Box per bundle at each context length (one decode position through both graphs) and for the whole loop."""
    keys = [*dict.fromkeys(k for r in runs for k in r["latency"]["steps"]), "loop"]  # a static bundle may lack some
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) * len(runs)), 4))
    width = 0.8 / len(runs)
    for j, r in enumerate(runs):
        lat = r["latency"]
        have = [(i, lat["steps"][k]["ort_step"]["samples_ms"] if k != "loop" else lat["loop_step"]["samples_ms"])
                for i, k in enumerate(keys) if k == "loop" or k in lat["steps"]]
        pos = [i + (j - (len(runs) - 1) / 2) * width for i, _ in have]
        box = ax.boxplot([d for _, d in have], positions=pos, widths=width * 0.9, patch_artist=True)
        for patch in box["boxes"]:
            patch.set_facecolor(f"C{j}")
        ax.plot([], [], "s", color=f"C{j}", label=label(r))
    ax.set_xticks(range(len(keys)), [f"context {k}" if k != "loop" else "greedy loop" for k in keys])
    ax.set(ylabel="Thinker+Talker step, ms", title="per-step latency")
    ax.legend(fontsize=8)
    return save(plt, fig, out / "step_latency.png")


def first_audio(plt, runs: list[dict], out: Path) -> str | None:
    """Stacked bar per bundle and prompt kind: encoder, prefill, delay steps, first Mimi frame."""
    bars = [(f"{label(r)}\n{kind}", stages) for r in runs
            for kind, stages in r["latency"].get("first_audio", {}).items() if stages is not None]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(7, 1 + 0.6 * len(bars)))
    left = [0.0] * len(bars)
    for i, stage in enumerate(STAGES):
        widths = [s[stage] for _, s in bars]
        ax.barh(range(len(bars)), widths, left=left, color=f"C{i}", label=stage.removesuffix("_ms").replace("_", " "))
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
    ax.set(xlabel="ms", title="time to first audio sample")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(plt, fig, out / "first_audio.png")


def precision(plt, runs: list[dict], out: Path) -> str:
    """One bar group per bundle: prefill at the longest context, step at each context, a Mimi frame, first audio."""
    def figures(lat: dict) -> dict[str, float]:
        steps = lat["steps"]
        longest = list(steps)[-1]
        f = {f"prefill {longest}": steps[longest]["ort_prefill"]["median_ms"]}
        f.update({f"step @{k}": s["ort_step"]["median_ms"] for k, s in steps.items()})
        if "mimi_frame" in lat:
            f["Mimi frame"] = lat["mimi_frame"]["median_ms"]
        if lat["answer"]["time_to_first_audio_ms"] is not None:
            f["first audio"] = lat["answer"]["time_to_first_audio_ms"]
        return f

    per_run = [figures(r["latency"]) for r in runs]
    names = [k for k in per_run[0] if all(k in f for f in per_run)]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs) * len(names) / 2), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(runs))], [f[name] for f in per_run],
               width, color=f"C{i}", label=name)
    ax.set_xticks(range(len(runs)), [label(r) for r in runs], fontsize=8)
    ax.set(ylabel="ms (median, log scale)", yscale="log", title="speed vs precision")
    ax.legend(fontsize=8)
    return save(plt, fig, out / "precision.png")


def save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def write(results: dict, out: Path) -> tuple[list[str], str]:
    """Every plot the run's suites allow, as file names under `out`, or why there are none."""
    runs = [r for r in results["bundles"] if "latency" in r]
    if not runs:
        return [], "the plots show the latency suite, which this run left out"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install 'omni-onnx[bench]' to get them)"
    pngs = [step_distribution(plt, runs, out), first_audio(plt, runs, out), precision(plt, runs, out)]
    return [p for p in pngs if p], ""
