"""A static bundle against a dynamic one, side by side in one process: the Thinker+Talker decode step at given
contexts and the prefill of as many positions, each timing alternating between the two bundles so that both see
the same machine load (issue 16's "static / dynamic" rows: targets <= 1.15x for the step, <= 1.3x for the prefill).

Uses only `OmniModel.load`, `Conversation` and the stepper protocol, so the same file also measures an older
checkout's bundles (`python benchmarks/static_ratio.py --static S --dynamic D` with that checkout installed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CONTEXTS = (64, 256)


def _median_ms(times: list[float]) -> float:
    return round(float(np.median(times)) * 1e3, 3)


def side_by_side(static_model, dynamic_model, contexts: tuple[int, ...] = CONTEXTS, steps: int = 40,
                 prefills: int = 6) -> dict:
    """{"decode"|"prefill": {context: {"static_ms", "dynamic_ms", "ratio"}}}: medians of `steps` decode steps after
    `context` positions and of `prefills` prefills of `context` positions, interleaved between the bundles
    (contexts the static bundle cannot hold are left out)."""
    from omni_onnx.model import Conversation

    rng = np.random.default_rng(0)
    cfg = dynamic_model.config
    vocab = min(cfg.vocab_size, static_model.config.vocab_size)
    out: dict = {"decode": {}, "prefill": {}}
    for past in (c for c in contexts if c + 1 <= static_model.static.context):
        ids = rng.integers(100, vocab, past + 1).astype(np.int64)
        codes = rng.integers(0, 2048, (cfg.num_codebooks, past + 1)).astype(np.int64)
        convs = {kind: Conversation(m, context=max(past + 8, 16))
                 for kind, m in (("static", static_model), ("dynamic", dynamic_model))}
        pre: dict[str, list[float]] = {k: [] for k in convs}
        step: dict[str, list[float]] = {k: [] for k in convs}
        for rep in range(prefills + 1):  # the first is a warm-up
            for kind, conv in convs.items():
                conv.state.truncate(0)
                t0 = time.perf_counter()
                conv.stepper.run(ids[:past], codes[:, :past])
                if rep:
                    pre[kind].append(time.perf_counter() - t0)
        for rep in range(steps + 3):
            for kind, conv in convs.items():
                conv.state.truncate(past)
                t0 = time.perf_counter()
                conv.stepper.run(ids[past:], codes[:, past:])
                if rep >= 3:
                    step[kind].append(time.perf_counter() - t0)
        for name, times in (("decode", step), ("prefill", pre)):
            s, d = _median_ms(times["static"]), _median_ms(times["dynamic"])
            out[name][str(past)] = {"static_ms": s, "dynamic_ms": d, "ratio": round(s / d, 3)}
    return out


def build(manifest: dict) -> tuple:
    """What makes two bundles comparable: the Thinker's precision and quantization recipe (a run may hold the same
    weights quantized two ways, before and after a recipe change)."""
    thinker = manifest["graphs"]["thinker"]
    return thinker.get("precision", "fp32"), json.dumps(thinker.get("recipe"), sort_keys=True)


def static_pairs(bundles: list[Path]) -> list[tuple[Path, Path]]:
    """Each static bundle of `bundles` with the first dynamic one built the same way (omni-bench --suite static)."""
    from omni_onnx.errors import OmniError

    manifests = {b: json.loads((b / "manifest.json").read_text(encoding="utf-8")) for b in bundles}
    dynamic: dict[tuple, Path] = {}
    for b, m in manifests.items():
        if m.get("static") is None:
            dynamic.setdefault(build(m), b)
    pairs = [(b, dynamic[build(m)]) for b, m in manifests.items()
             if m.get("static") is not None and build(m) in dynamic]
    if not pairs:
        raise OmniError("--suite static compares a static bundle with a dynamic one: pass one of each with --bundle "
                        "(same weights, precision and recipe)")
    return pairs


def measure(static: Path, dynamic: Path, threads: int, steps: int) -> dict:
    """Both bundles loaded in this process, then `side_by_side`."""
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    opts = SessionOptions(threads=threads)
    return {"static": str(static), "dynamic": str(dynamic),
            **side_by_side(OmniModel.load(static, opts), OmniModel.load(dynamic, opts), steps=steps)}


def markdown_rows(r: dict) -> list[str]:
    rows = ["| static / dynamic (same process, interleaved) | static ms | dynamic ms | ratio |", "|---|---|---|---|"]
    for name, what in (("decode", "Thinker+Talker decode step, context"), ("prefill", "prefill of, positions:")):
        for ctx, v in r[name].items():
            rows.append(f"| {what} {ctx} | {v['static_ms']:.2f} | {v['dynamic_ms']:.2f} | {v['ratio']:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="static_ratio", description=__doc__.split("\n\n")[0])
    p.add_argument("--static", type=Path, required=True, help="the static bundle")
    p.add_argument("--dynamic", type=Path, required=True, help="the dynamic bundle (same weights and precision)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="decode steps per context (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    r = measure(a.static, a.dynamic, a.threads, a.steps)
    print("\n".join(markdown_rows(r)))
    if a.out is not None:
        a.out.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
