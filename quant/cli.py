"""omni-quant: write an int8 (or int4) copy of a bundle (graphs quantized per recipe, side files unchanged, fresh
manifest), and with --report a fidelity report (JSON + Markdown) of the copy against its source."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
from omni_onnx import __version__
from omni_onnx.bundle import MANIFEST, Bundle, sha256_file
from omni_onnx.contracts import PREFILL_SUFFIX
from omni_onnx.errors import OmniError
from omni_onnx.export.extras import QUANT_INSTALL, MissingExtra, require
from omni_onnx.export.staging import check_out, move_into_place, staging_dir
from omni_onnx.model import OmniModel
from omni_onnx.session import SessionOptions

from .fidelity import fidelity
from .recipes import KEEP, MATMUL_NBITS, RECIPES, Recipe

log = logging.getLogger("omni-quant")
REPORT = "quant_report"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omni-quant", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("bundle", type=Path, help="fp32 bundle written by omni-export")
    p.add_argument("--to", choices=sorted(RECIPES), required=True, help="recipe (precision) to apply")
    p.add_argument("--out", type=Path, help="new bundle folder (default: <bundle>-<recipe> beside it)")
    p.add_argument("--report", action="store_true",
                   help=f"also compare the new bundle with the source and write {REPORT}.json/.md into it")
    p.add_argument("--steps", type=int, default=32,
                   help="with --report: steps of the teacher-forced/greedy runs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: 0, one per core)")
    return p


def check_source(src: Bundle, out: Path) -> None:
    """Quantizing is from fp32 only: an int8 bundle quantized again would be reported as fp32 -> int8 while the
    graphs barely change, and its errors would compound."""
    if out.resolve() == src.root.resolve():
        raise ValueError(f"--out must differ from the source bundle {src.root}")
    made = src.manifest.get("quantization")
    if made:
        raise ValueError(f"{src.root} is already quantized ({made.get('recipe')}); quantize the fp32 bundle it was "
                         f"made from (omni-export writes one)")
    check_out(out)


def quantize_bundle(src: Bundle, recipe: Recipe, out: Path, opts: SessionOptions) -> Path:
    """Write `src` with its graphs passed through `recipe` into a fresh folder, then move it to `out`."""
    from .dynamic_int8 import quantize_graph

    check_source(src, out)
    work = staging_dir(out)
    try:
        manifest: dict[str, Any] = json.loads(json.dumps(src.manifest))
        for name, entry in manifest["graphs"].items():
            t0, graph = time.perf_counter(), recipe.for_graph(name)
            dst = work / entry["file"]
            if graph.method == KEEP:  # graphs the recipe does not name (the VAD, ...) are copied unchanged
                shutil.copyfile(src.graph_path(name), dst)
            else:
                quantize_graph(src.graph_path(name), dst, graph, src.specs[name], opts)
            entry.update(sha256=sha256_file(dst), precision=graph.precision, recipe=graph.to_dict())
            log.info("%s: %s, %.1f -> %.1f MB (%.1f s)", name, graph.precision,
                     src.graph_path(name).stat().st_size / 1e6, dst.stat().st_size / 1e6, time.perf_counter() - t0)
        for rel in manifest.get("files", {}):
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.root / rel, work / rel)
            manifest["files"][rel] = sha256_file(work / rel)
        if manifest.get("static") is not None:  # the quantized decode and prefill graphs share their weights again
            from omni_onnx.export.shared_weights import share_weights
            static = [n for n in manifest["graphs"] if n.removesuffix(PREFILL_SUFFIX) in ("thinker", "talker")]
            rel = share_weights(work, [manifest["graphs"][n]["file"] for n in static])
            manifest["files"][rel] = sha256_file(work / rel)
            for n in static:
                manifest["graphs"][n]["sha256"] = sha256_file(work / manifest["graphs"][n]["file"])
        manifest["quantization"] = {"recipe": recipe.name, "from_bundle_created": src.manifest.get("created"),
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "onnxruntime": ort.__version__}
        if any(recipe.for_graph(name).method == MATMUL_NBITS and recipe.for_graph(name).bits == 4
               for name in manifest["graphs"]):
            # the 4-bit MatMulNBits graphs the quantizer writes do not load before 1.28 ("invalid model"), so an
            # int4 bundle asks for the writer's version; int8 bundles (8-bit MatMulNBits and dynamic int8) answer
            # exactly from 1.30, the package's floor (tests/test_old_onnxruntime.py)
            manifest["quantization"]["min_onnxruntime"] = ".".join(ort.__version__.split(".")[:2])
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        Bundle.open(work)  # the new manifest and checksums read back
        move_into_place(work, out)
        return out
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def bundle_mb(b: Bundle) -> float:
    return round(sum(f.stat().st_size for f in b.root.rglob("*") if f.is_file()) / 1e6, 1)


def build_report(src: Bundle, dst: Bundle, opts: SessionOptions, steps: int) -> dict[str, Any]:
    ref, quant = OmniModel(src, opts), OmniModel(dst, opts)
    return {"weights": src.manifest.get("source"), "source_bundle": str(src.root), "bundle": str(dst.root),
            "recipe": dst.manifest.get("quantization", {}).get("recipe"),
            "size_mb": {"fp32": bundle_mb(src), "quantized": bundle_mb(dst)},
            "graphs": {name: {"precision": e.get("precision", "fp32"), "why": e.get("recipe", {}).get("why", ""),
                              "mb": round(dst.graph_path(name).stat().st_size / 1e6, 1),
                              "fp32_mb": round(src.graph_path(name).stat().st_size / 1e6, 1)}
                       for name, e in dst.manifest["graphs"].items()},
            **fidelity(ref, quant, steps)}


def markdown(r: dict[str, Any]) -> str:
    tf, fr = r["teacher_forced"], r["free_running"]
    lines = [f"# Quantization report ({r['recipe']})", "",
             f"Weights: `{json.dumps(r['weights'])}`", "",
             f"Bundle size: {r['size_mb']['fp32']} MB fp32 -> {r['size_mb']['quantized']} MB", "",
             "| graph | precision | MB (fp32) | output | cosine | max abs error |", "|---|---|---|---|---|---|"]
    for name, g in r["graphs"].items():
        head = f"{name} | {g['precision']} | {g['mb']} ({g['fp32_mb']})"
        if name not in r["outputs"]:
            what = "audio (see below)" if name == "mimi_decoder" else "not compared (copied unchanged)"
            lines.append(f"| {head} | {what} | | |")
        for k, (out, c) in enumerate(r["outputs"].get(name, {}).items()):
            measured = (f"{c['cosine']:.6f} | {c['max_abs']:.3g}" if "cosine" in c else
                        f"{c['agreement']:.3f} of the codes equal | ")
            lines.append(f"| {head if k == 0 else ' | | '} | {out} | {measured} |")
    lines += ["", f"Teacher-forced top-1 agreement over {tf['steps']} steps ({len(tf['prompts'])} prompts): "
              f"text {tf['text_top1']:.3f}, codebooks " + ", ".join(f"{x:.3f}" for x in tf["codebook_top1"]), "",
              f"Free-running greedy ({fr['max_new_tokens']} steps, \"{fr['prompt']}\"): text ids {fr['text_ids']:.3f}, "
              "code streams " + ", ".join(f"{x:.3f}" for x in fr["codebooks"]) +
              f"; frames fp32 {fr['frames']['fp32']}, quantized {fr['frames']['quantized']}"]
    if "mimi_audio" in r:
        a = r["mimi_audio"]
        lines += ["", (f"Mimi audio over {a['frames']} frames: SNR {a['snr_db']} dB, cosine {a['cosine']:.6f}, "
                       f"max abs error {a['max_abs']:.3g}")]
    lines += ["", "Why each graph has its precision:", ""]
    lines += [f"- {name}: {g['precision']}, {g['why']}" for name, g in r["graphs"].items()]
    return "\n".join(lines) + "\n"


def write_report(src: Bundle, dst: Path, out: Path, opts: SessionOptions, steps: int) -> str:
    """The fidelity report of `dst` (the new bundle, still staged) written into it; returns the Markdown."""
    r = {**build_report(src, Bundle.open(dst), opts, steps), "bundle": str(out)}
    (dst / f"{REPORT}.json").write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    (dst / f"{REPORT}.md").write_text(markdown(r), encoding="utf-8")
    return markdown(r)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    opts = SessionOptions(threads=args.threads)
    try:
        require("omni-quant", ("onnx",), QUANT_INSTALL)
        src = Bundle.open(args.bundle)
        out = args.out or args.bundle.with_name(f"{args.bundle.name}-{args.to}")
        check_source(src, out)
        staging = staging_dir(out)
        try:  # the report is written into the new bundle before it is moved into place
            dst = quantize_bundle(src, RECIPES[args.to], staging / "bundle", opts)
            report = write_report(src, dst, out, opts, args.steps) if args.report else None
            move_into_place(dst, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"{args.to} bundle ready: {out}")
        if report:
            print(report)
    except KeyboardInterrupt:
        print("omni-quant: interrupted; nothing written", file=sys.stderr)
        return 130
    except MissingExtra as e:
        print(f"omni-quant: error: {e}", file=sys.stderr)
        return 2
    except (OmniError, ValueError, OSError) as e:
        print(f"omni-quant: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
