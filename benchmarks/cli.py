"""`omni-bench`: latency, memory, fidelity and quality of one or more bundles in one command, written as
results.json, results.md and (with matplotlib, the `bench` extra) PNG plots.

    omni-bench --bundle bundles/fp32 --bundle bundles/int8 --out benchmarks/results/run
    omni-bench --bundle B --checkpoint sft_omni_768.pth --mimi MIMI --sensevoice SV --siglip SIGLIP   # + fidelity
    omni-bench --quick                   # tiny step counts: a smoke run of every suite on the default bundle
    omni-bench --suite live --bundle B   # omni-run --mic on a PulseAudio server it starts (see benchmarks/live.py)

The fidelity suite runs our export-time torch modules (eager, the same weights) beside each bundle: it needs the
export extra and the sources the bundle was exported from (--checkpoint, and --mimi/--sensevoice/--siglip for those
graphs). It is in the default suites when --checkpoint is given. The floor suite (each bundle's step against its
weight-streaming floor; a MoE bundle's step against a dense one's of the same precision) needs torch and onnx, and is
in the default suites when they are installed. The live suite runs in real time (minutes per bundle)
on a sound server it starts itself (needs `pulseaudio`), so it runs only when named. The mimi suite (each bundle's
Mimi frame against transformers' streaming decode on the same weights, and its audio SNR against fp32) needs the
export extra and --mimi (a demo bundle's Mimi is re-drawn from its seed), so it runs only when named.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omni_onnx import __version__
from omni_onnx.errors import OmniError
from omni_onnx.export.extras import BENCH_INSTALL, EXPORT_INSTALL, EXPORT_MODULES, MissingExtra, installed, require

from . import floor, live, mimi_ratio, plots, quality, static_ratio
from .live_server import require_tools
from .machine import describe
from .memory import memory_rows

FLOOR_MODULES = ("torch", "onnx")  # the floor suite's bandwidth probe and weight count
SUITES = ("latency", "floor", "memory", "fidelity", "quality", "live", "static", "mimi")


@dataclass(frozen=True)
class Plan:
    """How much work each suite does: the full run, or `--quick` (a smoke run in seconds on a tiny bundle)."""
    contexts: tuple[int, ...]
    steps: int
    max_new_tokens: int
    questions: int | None  # None: every eval question
    greedy_steps: int  # fidelity: positions compared (teacher-forced logits, greedy loop)

    @classmethod
    def of(cls, quick: bool) -> Plan:
        return cls((8, 32), 5, 24, 2, 16) if quick else cls((64, 256, 1024), 50, 256, None, 128)


def bundle_identity(root: Path) -> dict:
    """What the figures were measured on: manifest hash, per-graph sha256 and the weights it was exported from."""
    raw = (root / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    return {"path": str(root), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "graphs_sha256": {k: v["sha256"] for k, v in manifest["graphs"].items()},
            "source": manifest.get("source"), "package_version": manifest.get("package_version"),
            "precision": manifest["graphs"]["thinker"].get("precision", "fp32"),
            "recipe": manifest["graphs"]["thinker"].get("recipe")}


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


def run_bundle(root: Path, suites: tuple[str, ...], plan: Plan, threads: int, progress: Progress,
               reference=None, voice: str | None = None, live_plan=None, mimi_folder: Path | None = None) -> dict:
    """Every requested suite on one bundle; `reference` is the fidelity suite's `TorchReference`, `live_plan` the
    live suite's `LivePlan`, `mimi_folder` the mimi suite's Mimi weights (None: a demo bundle's)."""
    from omni_onnx.model import OmniModel
    from omni_onnx.session import SessionOptions

    from . import latency, live, memory

    out: dict = {"bundle": bundle_identity(root)}
    if "live" in suites:  # first: its app loads the bundle in a child process, so none is loaded here yet
        out["live"] = live.run_live(root, live_plan, threads, progress)
    if not set(suites) - {"live", "static"}:  # static: one figure per pair of bundles, see run()
        return out
    model = OmniModel.load(root, SessionOptions(threads=threads))
    if "latency" in suites:
        out["latency"] = latency.bench_bundle(model, plan.contexts, plan.steps, plan.max_new_tokens, progress)
    if "floor" in suites:
        out["floor"] = floor.step_floor(model, plan.steps, threads)
        progress()
    if "mimi" in suites:
        mimi = mimi_ratio.load_reference(model, mimi_folder, threads)
        out["mimi"] = mimi_ratio.measure(model, mimi, calls=plan.steps)
        progress()
    if "memory" in suites:
        out["memory"] = memory.measure(root, plan.max_new_tokens, threads)
        progress()
    if "fidelity" in suites:
        from . import fidelity  # torch, onnx: the export extra, checked by torch_reference
        out["fidelity"] = fidelity.fidelity(model, reference, plan.contexts, plan.steps, plan.greedy_steps, progress)
    if "quality" in suites:
        questions = quality.eval_questions()[:plan.questions]
        out["quality"] = quality.consistency(model, questions, plan.max_new_tokens, progress)
        out["quality"]["voice_clone"] = quality.voice_similarity(model, questions, voice, plan.max_new_tokens,
                                                                 progress)
    return out


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def latency_rows(lat: dict) -> list[str]:
    rows = []
    for past, s in lat["steps"].items():
        rows += [f"| prefill {past} positions, ms (median) | {fmt(s['ort_prefill']['median_ms'])} |",
                 (f"| Thinker+Talker step at context {past}, ms (median / p90) | "
                  f"{fmt(s['ort_step']['median_ms'])} / {fmt(s['ort_step']['p90_ms'])} |")]
    rows.append(f"| greedy loop per step, ms (median / p90) | {fmt(lat['loop_step']['median_ms'])} / "
                f"{fmt(lat['loop_step']['p90_ms'])} |")
    for key, label in (("mimi_frame", "Mimi frame (80 ms audio), ms"), ("sensevoice_3s", "SenseVoice 3 s, ms"),
                       ("vision_image", "SigLIP + projector, one image, ms")):
        if key in lat:
            rows.append(f"| {label} | {fmt(lat[key]['median_ms'])} |")
    a = lat["answer"]
    rows += [(f"| time to first text / first audio (text prompt), ms | {fmt(a['time_to_first_text_ms'])} / "
              f"{fmt(a['time_to_first_audio_ms'])} |"), f"| real-time factor of the answer | {fmt(a['real_time_factor'])} |"]
    for kind, st in lat.get("first_audio", {}).items():
        what = "text prompt" if kind == "text" else "end of the spoken question"
        rows.append(f"| first audio from the {what}, ms = encoder + prefill + delay steps + Mimi frame | " + (
            "n/a (no frame)" if st is None else
            f"{fmt(st['total_ms'])} = {fmt(st['encoder_ms'])} + {fmt(st['prefill_ms'])} + "
            f"{fmt(st['delay_steps_ms'])} ({st['delay_steps']:g} steps) + {fmt(st['mimi_frame_ms'])}") + " |")
    return rows


def fidelity_rows(f: dict) -> list[str]:
    lg, g, sp = f["logits"], f["greedy"], f["speed"]
    same = "identical" if g["codes_identical"] and g["text_identical"] else (
        f"differ (text from step {fmt(g['first_text_difference'])}, codes from step {fmt(g['first_code_difference'])})")
    rows = [f"| torch reference | `{f['reference']['checkpoint']}` (same weights: {f['reference']['same_weights']}) |",
            (f"| logits max abs error vs torch over {lg['positions']} positions, text / audio | "
             f"{fmt(lg['text_max_abs'])} / {fmt(lg['audio_max_abs'])} (logits up to {fmt(lg['logit_scale'])}; "
             f"top-1 agreement {fmt(lg['text_top1'])} / {fmt(lg['codebook_top1'])}) |"),
            (f"| greedy loop vs torch reference, {g['steps_run']} steps ({g['text_tokens']} text tokens, "
             f"{g['frames']} frames) | {same} |"),
            (f"| greedy loop per step, ORT / torch, ms | {fmt(g['ort_loop_ms_per_step'])} / "
             f"{fmt(g['torch_loop_ms_per_step'])} (ratio {fmt(g['loop_ort_over_torch'])}) |")]
    for past, s in sp["steps"].items():
        rows += [(f"| prefill {past}, ORT / torch, ms | {fmt(s['ort_prefill']['median_ms'])} / "
                  f"{fmt(s['torch_prefill']['median_ms'])} (ratio {fmt(s['prefill_ort_over_torch'])}) |"),
                 (f"| step at context {past}, ORT / torch, ms | {fmt(s['ort_step']['median_ms'])} / "
                  f"{fmt(s['torch_step']['median_ms'])} (ratio {fmt(s['step_ort_over_torch'])}) |")]
    fl = sp["floor"]
    rows.append(f"| weight-streaming floor of a step, ms | {fmt(fl['floor_ms'])} ({fmt(fl['weight_mb'])} MB / "
                f"{fmt(fl['bandwidth_gbs'])} GB/s; ORT step at context {fl['context']} = "
                f"{fmt(fl['ort_step_over_floor'])}x, torch {fmt(fl['torch_step_over_floor'])}x) |")
    for key, label in (("mimi_frame", "Mimi frame"), ("sensevoice_3s", "SenseVoice 3 s"),
                       ("sensevoice_6s", "SenseVoice 6 s"), ("sensevoice_10s", "SenseVoice 10 s"),
                       ("vision_image", "SigLIP + projector, one image")):
        if key in sp:
            e = sp[key]
            floor = "" if "compute_floor_ms" not in e else (
                f"; compute floor {fmt(e['compute_floor_ms'])} ms = {fmt(e['gmacs'])} GMAC at "
                f"{fmt(sp['matmul_gflops'])} GFLOP/s: ORT {fmt(e['ort_over_floor'])}x, "
                f"torch {fmt(e['torch_over_floor'])}x")
            rows.append(f"| {label}, ORT / torch, ms | {fmt(e['ort']['median_ms'])} / {fmt(e['torch']['median_ms'])} "
                        f"(ratio {fmt(e['ort_over_torch'])}; max abs error {fmt(e['max_abs'])}{floor}) |")
    return rows


def quality_rows(q: dict) -> list[str]:
    p, vc = q["paper"], q["voice_clone"]
    sim = (f"{fmt(vc['similarity'])} (voice {vc['voice']}, {vc['scored']}/{vc['prompts']} prompts)"
           if vc["similarity"] is not None else vc.get("note", "n/a"))
    cer = (f"{fmt(q['cer_mean'])} / {fmt(q['cer_corpus'])}" if "note" not in q else q["note"])
    return [(f"| Thinker–Talker CER, mean ({q['scored']}/{q['prompts']} prompts) / corpus | {cer} "
             f"(paper: {p['dense']['cer']} dense, {p['moe']['cer']} MoE) |"),
            f"| voice-clone similarity | {sim} (paper: {p['dense']['similarity']} dense, {p['moe']['similarity']} MoE) |"]


def live_rows(lv: dict) -> list[str]:
    each = lambda vals: ", ".join(fmt(v) for v in vals)
    load = f"load average {fmt(lv['load_average_start'][0])} -> {fmt(lv['load_average_end'][0])}"
    rows = [f"| live: sound server | PulseAudio null sinks, {load} |"]
    failed = lambda name, r: f"| live: {name} | failed: {r['error']} |"
    parts = [lv[k] for k in ("latency", "barge_in", "double_talk", "pauses") if k in lv] + lv.get("echo", [])
    if "latency" in lv:
        la = lv["latency"]
        rows += [failed("latency", la)] if "error" in la else [
            (f"| live: end of speech -> first answer sound, ms (median; each) | {fmt(la['median_ms'])}; "
             f"{each(e['latency_ms'] for e in la['each'])} |"),
            (f"| live: of which turn taken -> first audio written, ms (each) | "
             f"{each(e['turn_to_first_audio_ms'] for e in la['each'])} |")]
    if "barge_in" in lv:
        b = lv["barge_in"]
        rows.append(failed("barge-in", b) if "error" in b else
                    f"| live: barge-in onset -> loudspeaker silent, ms (median; each) | {fmt(b['median_ms'])}; "
                    f"{each(e['onset_to_silent_ms'] for e in b['each'])} ({b['detected']}/{b['barge_ins']} "
                    f"detected) |")
    for e in lv.get("echo", []):
        delay = f", recorded delay {fmt(e['recorded_echo_delay_ms'])} ms" if "recorded_echo_delay_ms" in e else ""
        name = f"self-interruptions, echo {e['delay_ms']} ms at {e['gain_db']:+g} dB{delay}"
        rows.append(failed(name, e) if "error" in e else
                    f"| live: {name} | {fmt(e['self_interruptions'])} (answer played {fmt(e['played_s'])} s) |")
    if "double_talk" in lv:
        d = lv["double_talk"]
        name = f"barge-ins detected with echo {d['delay_ms']} ms at {d['gain_db']:+g} dB"
        rows.append(failed(name, d) if "error" in d else
                    f"| live: {name} | {d['detected']}/{d['barge_ins']} (median {fmt(d['median_ms'])} ms to silent; "
                    f"{d['self_interruptions']} self-interruptions) |")
    if "pauses" in lv:
        pa = lv["pauses"]
        rows += [failed("pauses", pa)] if "error" in pa else [
            (f"| live: {pause} ms pause mid-question taken as the end of the turn | {st['false_end_of_turn']}/"
             f"{st['questions']} (latency median {fmt(st['median_latency_ms'])} ms) |")
            for pause, st in pa["by_pause_ms"].items()]
    done = [t for t in parts if "error" not in t]
    if done:
        rows += [f"| live: underruns while answers played | {sum(t['underruns'] for t in done)} |",
                 (f"| live: silent gaps in answers at the loudspeaker / in --record's played channel only | "
                  f"{sum(t['loudspeaker_gaps'] for t in done)} / {sum(t['record_gaps'] for t in done)} "
                  f"({fmt(sum(t['record_gap_ms'] for t in done))} ms in "
                  f"{fmt(sum(t['record_seconds'] for t in done))} s recorded) |")]
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [(f"CPU: {m['cpu']} ({', '.join(m['cpu_flags']) or 'no AVX flags'}), {m['threads']} threads, "
              f"onnxruntime {m['versions']['onnxruntime']}, torch {m['versions']['torch'] or 'not installed'}"
              f"{' (quick run)' if results['quick'] else ''}; {results['seconds']:.0f} s in all"), ""]
    for r in results["bundles"]:
        b = r["bundle"]
        lines += [f"## {b['path']} ({b['precision']})", "", f"weights: `{json.dumps(b['source'])}`", "",
                  "| what | value |", "|---|---|"]
        if "latency" in r:
            lines += latency_rows(r["latency"])
        if "floor" in r:
            lines += floor.floor_rows(r, fmt)
        if "mimi" in r:
            lines += mimi_ratio.mimi_rows(r, fmt)
        if "memory" in r:
            mem = r["memory"]
            lines += [f"| bundle on disk, MB | {fmt(mem['bundle_mb'])} |",
                      *(f"| {g}.onnx, MB | {fmt(v)} |" for g, v in mem["graph_mb"].items()),
                      *memory_rows(mem, fmt)]
        if "fidelity" in r:
            lines += fidelity_rows(r["fidelity"])
        if "quality" in r:
            lines += quality_rows(r["quality"])
        if "live" in r:
            lines += live_rows(r["live"])
        lines.append("")
    lines += floor.moe_rows(results.get("moe_over_dense", []), fmt)
    for side in results.get("static_vs_dynamic", []):
        lines += [f"## {side['static']} against {side['dynamic']}", "", *static_ratio.markdown_rows(side), ""]
    lines.append("Random weights give meaningless quality figures; the `weights` line says what each bundle holds.")
    return "\n".join(lines) + "\n"


def torch_reference(a: argparse.Namespace, bundles: list[Path]):
    """The fidelity suite's torch side, after checking it can run and holds the bundles' weights."""
    from omni_onnx.bundle import sha256_file

    if a.checkpoint is None:
        raise OmniError("the fidelity suite compares each bundle with the PyTorch reference on the same weights: give "
                        "--checkpoint (and --mimi/--sensevoice/--siglip: the folders the bundle was exported from)")
    require("omni-bench --suite fidelity", EXPORT_MODULES, f"{EXPORT_INSTALL}, or leave fidelity out of --suite")
    from .fidelity import TorchReference, TorchSources, same_weights

    if not a.checkpoint.is_file():
        raise OmniError(f"--checkpoint {a.checkpoint} is not a file")
    sha = sha256_file(a.checkpoint)
    for b in bundles:
        manifest = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
        if not same_weights(manifest, sha):
            raise OmniError(f"{b} was exported from a checkpoint with sha256 "
                            f"{(manifest.get('source') or {}).get('checkpoint_sha256')}, but --checkpoint "
                            f"{a.checkpoint} has {sha}; pass the checkpoint the bundle was exported from")
    return TorchReference(TorchSources(a.checkpoint, a.mimi, a.sensevoice, a.siglip), a.threads, sha)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omni-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--bundle", type=Path, action="append", help="a bundle to measure (repeatable; default: the "
                   "omni-export cache location)")
    p.add_argument("--suite", help=f"comma-separated, of: {', '.join(SUITES)} (default: all but live, static, mimi; "
                   "fidelity only with --checkpoint; static: a static bundle against a dynamic one, both --bundle)")
    p.add_argument("--quick", action="store_true", help="tiny step counts (a smoke run, seconds on a tiny bundle)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/omni-bench"),
                   help="folder for results.json, results.md and the plots (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, help="fidelity: the .pth the bundles were exported from")
    p.add_argument("--mimi", type=Path, help="fidelity, mimi: the Mimi folder the bundles were exported from")
    p.add_argument("--sensevoice", type=Path, help="fidelity: the SenseVoiceSmall folder")
    p.add_argument("--siglip", type=Path, help="fidelity: the SigLIP folder")
    p.add_argument("--voice", help="quality: the voice cloned for the similarity figure (default: the first)")
    p.add_argument("--live-scenarios", default=",".join(live.SCENARIOS),
                   help=f"live: comma-separated, of: {', '.join(live.SCENARIOS)}")
    p.add_argument("--live-repeats", type=int, help="live: questions / barge-ins per scenario (default: 5, 10 "
                   "with echo, 2 per pause length; --quick: 1-3)")
    return p


def write_results(results: dict, out: Path) -> str:
    """results.json, results.md and the plots, written into a staging folder and each moved into `out` at the
    end: an error or Ctrl-C leaves the previous run's files, never a half-written one. Returns the summary."""
    import os
    import shutil
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".omni-bench.", dir=out))
    except OSError as e:
        raise OmniError(f"cannot write the results into --out {out} ({e.strerror}); choose a writable folder") from None
    try:
        (staging / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        table = markdown(results)
        (staging / "results.md").write_text(table, encoding="utf-8")
        pngs, why_not = plots.write(results, staging)
        for f in ("results.json", "results.md", *pngs):
            os.replace(staging / f, out / f)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return table + (f"plots: {', '.join(pngs)}" if pngs else f"plots skipped: {why_not}") + f"\nwritten to {out}"


def run(a: argparse.Namespace) -> str:
    from omni_onnx.bundle import default_bundle_dir

    default = [s for s in SUITES if s not in ("live", "static", "mimi")
               and (s != "fidelity" or a.checkpoint is not None)
               and (s != "floor" or all(installed(m) for m in FLOOR_MODULES))]
    suites = tuple(s.strip() for s in (a.suite or ",".join(default)).split(",") if s.strip())
    unknown = sorted(set(suites) - set(SUITES))
    if unknown or not suites:
        raise OmniError(f"unknown suite(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SUITES)}")
    if "floor" in suites:
        require("omni-bench --suite floor", FLOOR_MODULES, f"{EXPORT_INSTALL}, or leave floor out of --suite")
    if "mimi" in suites:
        require("omni-bench --suite mimi", EXPORT_MODULES, f"{EXPORT_INSTALL}, or leave mimi out of --suite")
    if "quality" in suites:
        require("omni-bench --suite quality", ("jiwer",), f"{BENCH_INSTALL}, or leave quality out of --suite")
    bundles = a.bundle or [default_bundle_dir()]
    for b in bundles:
        if not (b / "manifest.json").is_file():
            raise OmniError(f"{b} is not a bundle (no manifest.json); build one with omni-export, or pass --bundle DIR")
    scenarios = tuple(s.strip() for s in a.live_scenarios.split(",") if s.strip())
    if not scenarios or set(scenarios) - set(live.SCENARIOS):
        raise OmniError(f"unknown live scenario(s) in {a.live_scenarios!r}; choose from {', '.join(live.SCENARIOS)}")
    if a.live_repeats is not None and a.live_repeats < 1:
        raise OmniError("--live-repeats must be at least 1")
    live_plan = live.LivePlan.of(a.quick, scenarios, a.live_repeats)
    if "live" in suites:
        require_tools()
    t0 = time.perf_counter()
    reference = torch_reference(a, bundles) if "fidelity" in suites else None
    plan = Plan.of(a.quick)
    questions = plan.questions or len(quality.eval_questions())
    total = 0
    for b in bundles:
        graphs = json.loads((b / "manifest.json").read_text(encoding="utf-8"))["graphs"]
        answers = ({"sensevoice", "mimi_decoder"} <= set(graphs)) + ("campplus" in graphs)  # per question
        total += (len(plan.contexts) + 1) * (("latency" in suites) + ("fidelity" in suites)) + \
            ("memory" in suites) + ("floor" in suites) + ("mimi" in suites) + \
            questions * answers * ("quality" in suites) + \
            len(scenarios) * ("live" in suites)
    pairs = static_ratio.static_pairs(bundles) if "static" in suites else []
    progress = Progress(total + len(pairs))
    sides = []
    try:
        runs = [run_bundle(b, suites, plan, a.threads, progress, reference, a.voice, live_plan, a.mimi)
                for b in bundles]
        for pair in pairs:
            sides.append(static_ratio.measure(*pair, a.threads, plan.steps))
            progress()
    finally:
        progress.close()
    results = {"machine": describe(a.threads), "quick": a.quick, "suites": list(suites),
               "plan": asdict(plan), "seconds": time.perf_counter() - t0, "bundles": runs,
               "moe_over_dense": floor.moe_over_dense(runs)}
    if sides:
        results["static_vs_dynamic"] = sides
    return write_results(results, a.out)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        print(run(a))
    except KeyboardInterrupt:
        print("omni-bench: interrupted; no results written", file=sys.stderr)
        return 130
    except MissingExtra as e:
        print(f"omni-bench: error: {e}", file=sys.stderr)
        return 2
    except (OmniError, ValueError, OSError) as e:
        print(f"omni-bench: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
