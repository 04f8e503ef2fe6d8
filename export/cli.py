"""omni-export: turn a released MiniMind-O checkpoint (+ Mimi, SenseVoice, SigLIP) into a bundle that omni-run loads
without torch."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from omni_onnx import __version__
from omni_onnx.bundle import MANIFEST, default_bundle_dir, sha256_file
from omni_onnx.config import FULL, TINY
from omni_onnx.contracts import GraphSpec, StaticShape, talker_spec, thinker_spec
from omni_onnx.errors import OmniError
from omni_onnx.image import PREPROCESSOR_FILE
from omni_onnx.quant.recipes import RECIPES

from .extras import EXPORT_INSTALL, EXPORT_MODULES, MissingExtra, require
from .hub import HubSource
from .staging import check_out, move_into_place, staging_dir
from .voices import RELEASED_VOICES

# Entry point of a runtime-only install too: torch and the export extra are imported inside the functions, after
# `require` has said what to install.
log = logging.getLogger("omni-export")
RANDOM_WEIGHTS_NOTICE = "random weights (a demo): the bundle runs the real code path, but its answers are noise"
DEMO_RMS_DBFS = -28.0  # the demo's random codec speaks at a listening level (speech is ~-30..-20 dBFS RMS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omni-export", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="upstream .pth (sft_omni_768[_moe].pth) or transformers folder")
    src.add_argument("--from-hub", action="store_true", help="download the released weights first")
    src.add_argument("--demo", action="store_true", help="random weights in the released formats (offline demo)")
    p.add_argument("--mimi", type=Path, help="Hugging Face Mimi folder (kyutai/mimi); without it no speech audio")
    p.add_argument("--siglip", type=Path, help="SigLIP2 vision folder (siglip2-base-p32-256-ve): image input")
    p.add_argument("--sensevoice", type=Path, help="funasr SenseVoiceSmall folder: speech input and transcripts")
    p.add_argument("--campplus", type=Path, help="CAM++ campplus_cn_common.pt: speaker embeddings; with --mimi also "
                                                 "the Mimi encoder, for omni-voices add (voice cloning)")
    p.add_argument("--voices", type=Path, nargs="*", default=[RELEASED_VOICES],
                   help="voices.pt files or folders of .npz voices (default: the 12 released presets)")
    p.add_argument("--out", type=Path, default=default_bundle_dir(),
                   help="bundle folder to write (default: %(default)s)")
    p.add_argument("--moe", action="store_true", help="with --from-hub: the MoE release; with --demo: random MoE "
                   "weights (4 experts, top-1)")
    p.add_argument("--hub-mirror", type=Path, help="with --from-hub: a local folder laid out as <owner>/<name>/")
    p.add_argument("--demo-size", choices=("tiny", "full"), default="tiny",
                   help="with --demo: model size (default: %(default)s)")
    p.add_argument("--skip-verify", action="store_true", help="skip the torch-vs-onnxruntime parity checks")
    p.add_argument("--precision", choices=("fp32", *RECIPES), default="fp32",
                   help="quantize the bundle with this omni-quant recipe before it is moved into place (int4: "
                        "Thinker+Talker; default: %(default)s)")
    p.add_argument("--static", action="store_true",
                   help="fixed-shape Thinker/Talker graphs (no symbolic dim: NPUs, mobile); no speech encoder yet")
    p.add_argument("--context", type=int, default=1024,
                   help="with --static: KV buffer capacity in positions (default: %(default)s)")
    p.add_argument("--prefill-chunk", type=int, default=32,
                   help="with --static: positions per prefill call (1: no prefill graphs, decode graphs only; default: "
                        "%(default)s)")
    p.add_argument("--ort", action="store_true",
                   help="convert the graphs to ORT format, with the required-operators config and onnxruntime's "
                        "mobile usability report")
    return p


@dataclass(frozen=True)
class Sources:
    """What a bundle is exported from: the MiniMind-O checkpoint plus the frozen encoders/decoder folders."""
    checkpoint: Path
    mimi: Path | None = None
    siglip: Path | None = None
    sensevoice: Path | None = None
    voices: tuple[Path, ...] = (RELEASED_VOICES,)
    campplus: Path | None = None


@dataclass
class BundleParts:
    """What the graph exporters have written so far: graphs, extra files (relative paths), manifest sections."""
    work: Path
    verify: bool
    graphs: dict[str, tuple[Path, GraphSpec]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, path: Path, spec: GraphSpec, t0: float) -> None:
        self.graphs[name] = (path, spec)
        log.info("%s: %s (%.1f s)", name, path.name, time.perf_counter() - t0)


def add_llm(parts: BundleParts, model, t0: float) -> None:
    from . import talker, thinker
    for name, mod, spec in (("thinker", thinker, thinker_spec), ("talker", talker, talker_spec)):
        path = mod.export(model, parts.work)
        if parts.verify:
            mod.verify(model, path)
        parts.add(name, path, spec(model.cfg), t0)


def add_static_llm(parts: BundleParts, model, shape: StaticShape, t0: float) -> None:
    from .shared_weights import share_weights
    from .static_graphs import export_static
    graphs = export_static(model, shape, parts.work, parts.verify)
    parts.files.append(share_weights(parts.work, [path.name for path, _ in graphs.values()]))
    for name, (path, spec) in graphs.items():
        parts.add(name, path, spec, t0)
    parts.sections["static"] = shape.to_dict()


def add_mimi(parts: BundleParts, folder: Path, t0: float, static: bool) -> None:
    """The streaming decoder: any number of frames per call, one in a static bundle (no symbolic dimension)."""
    from omni_onnx.contracts import mimi_decoder_spec

    from . import mimi_decoder
    mimi = mimi_decoder.load_mimi(folder)
    dims = mimi_decoder.mimi_dims(mimi)
    per_call = 1 if static else None
    path = mimi_decoder.export(mimi, parts.work / "mimi_decoder.onnx", per_call)
    if parts.verify:
        mimi_decoder.verify(mimi, path, frames_per_call=per_call)
    parts.add("mimi_decoder", path, mimi_decoder_spec(dims, per_call), t0)
    parts.sections["mimi"] = dims.to_dict()


def add_vision(parts: BundleParts, folder: Path, model, t0: float) -> None:
    """SigLIP tower + vision projector in one graph, and the folder's preprocessing settings for the runtime."""
    from omni_onnx.contracts import vision_spec

    from . import siglip
    tower = siglip.load_siglip(folder)
    path = siglip.export(tower, model, parts.work)
    if parts.verify:
        siglip.verify(tower, model, path)
    parts.add("vision", path, vision_spec(model.cfg, siglip.image_size(tower)), t0)
    (parts.work / PREPROCESSOR_FILE).write_text(json.dumps(siglip.preprocessor_config(folder), indent=2))
    parts.files.append(PREPROCESSOR_FILE)
    parts.sections["vision"] = {"image_size": siglip.image_size(tower)}


def add_speech(parts: BundleParts, folder: Path, model, t0: float) -> None:
    """SenseVoice encoder (+ CTC head) from the funasr folder, the audio projector from the checkpoint, and the
    front end's side files (CMVN, prompt queries, CTC vocabulary)."""
    from omni_onnx.contracts import audio_projector_spec, sensevoice_spec

    from . import audio_projector, sensevoice
    encoder, info = sensevoice.load_sensevoice(folder)
    if encoder.cfg.output_size != model.cfg.audio_hidden_size:
        raise ValueError(f"{folder} encodes {encoder.cfg.output_size}-d features but the checkpoint's audio "
                         f"projector takes {model.cfg.audio_hidden_size}; use the SenseVoiceSmall folder upstream uses")
    path = sensevoice.export(encoder, parts.work)
    if parts.verify:
        sensevoice.verify(encoder, path)
    parts.add("sensevoice", path, sensevoice_spec(encoder.cfg.vocab_size, encoder.cfg.output_size,
                                                  encoder.cfg.input_size), t0)
    path = audio_projector.export(model, parts.work)
    if parts.verify:
        audio_projector.verify(model, path)
    parts.add("audio_projector", path, audio_projector_spec(model.cfg), t0)
    parts.files += sensevoice.write_bundle_files(encoder, info, parts.work)
    parts.sections["speech"] = {"vocab_size": encoder.cfg.vocab_size, "output_size": encoder.cfg.output_size,
                                "feature_dim": encoder.cfg.input_size}


def add_vad(parts: BundleParts, t0: float) -> None:
    """Silero VAD for `omni-run --mic`, from the silero-vad package (released weights, MIT licence note)."""
    from .vad import write_vad
    path, spec, licence = write_vad(parts.work)
    parts.add("vad", path, spec, t0)
    parts.files.append(licence)


def add_cloning(parts: BundleParts, mimi_folder: Path | None, campplus_path: Path, t0: float) -> None:
    """CAM++ (speaker embeddings) and, given the Mimi folder, the whole-clip Mimi encoder: together they turn a
    recording into a voice (runtime/cloning.py). The encoder is exported only here, since nothing else needs it."""
    from omni_onnx.contracts import campplus_spec, mimi_encoder_spec

    from . import campplus, mimi_encoder
    from .mimi_decoder import load_mimi
    model = campplus.load_campplus(campplus_path)
    path = campplus.export(model, parts.work / "campplus.onnx")
    if parts.verify:
        campplus.verify(model, path)
    parts.add("campplus", path, campplus_spec(), t0)
    if mimi_folder is None:
        log.warning("--campplus without --mimi: speaker embeddings only, no voice cloning (it needs the Mimi encoder)")
        return
    mimi = load_mimi(mimi_folder)
    path = mimi_encoder.export(mimi, parts.work / "mimi_encoder.onnx")
    if parts.verify:
        mimi_encoder.verify(mimi, path)
    parts.add("mimi_encoder", path, mimi_encoder_spec(), t0)


def check_sources(static: StaticShape | None, checkpoint: Path | None = None, mimi: Path | None = None,
                  siglip: Path | None = None, sensevoice: Path | None = None, voices: tuple[Path, ...] = (),
                  campplus: Path | None = None) -> None:
    """Every input path given and the option combination, before the first graph (an export takes minutes);
    raises ValueError naming the first bad one and the fix."""
    from .inputs import check_campplus_file, check_mimi_folder, check_siglip_folder, resolve_folder
    from .voices import read_voices

    if static is not None and (sensevoice is not None or campplus is not None):
        raise ValueError("--static does not cover the speech and speaker encoders yet (their frame count varies "
                         "with the clip); export the static bundle without --sensevoice and --campplus")
    if checkpoint is not None and not checkpoint.exists():
        raise ValueError(f"--checkpoint {checkpoint} does not exist; pass upstream's sft_omni_768.pth or a "
                         f"transformers folder")
    for flag, path, check in (("--mimi", mimi, check_mimi_folder), ("--siglip", siglip, check_siglip_folder),
                              ("--sensevoice", sensevoice, resolve_folder),
                              ("--campplus", campplus, check_campplus_file)):
        if path is not None:
            try:
                check(path)
            except ValueError as e:
                raise ValueError(f"{flag}: {e}") from None
    for path in voices:
        if not path.exists():
            raise ValueError(f"--voices: {path} does not exist; pass voices.pt files or folders of .npz voices")
        read_voices(path)


def export_bundle(sources: Sources, out: Path, verify: bool = True, static: StaticShape | None = None,
                  random_weights: bool = False) -> Path:
    """Export every graph into a fresh folder, then move it into place, so a failed export leaves no half bundle.
    `static`: fixed-shape Thinker/Talker; `random_weights`: a demo, recorded in the manifest."""
    from .bundle_writer import copy_tokenizer, write_manifest
    from .checkpoint import load_model
    from .voices import write_voices

    check_sources(static, **asdict(sources))
    check_out(out)
    work = staging_dir(out)
    try:
        t0 = time.perf_counter()
        model = load_model(sources.checkpoint)
        parts = BundleParts(work, verify)
        if static is None:
            add_llm(parts, model, t0)
        else:
            add_static_llm(parts, model, static, t0)
        if sources.mimi is not None:
            add_mimi(parts, sources.mimi, t0, static is not None)
        if sources.siglip is not None:
            add_vision(parts, sources.siglip, model, t0)
        if sources.sensevoice is not None:
            add_speech(parts, sources.sensevoice, model, t0)
        if sources.campplus is not None:
            add_cloning(parts, sources.mimi, sources.campplus, t0)
        if static is None:  # the released VAD file branches on its input and keeps a symbolic sample axis
            add_vad(parts, t0)
        parts.files += copy_tokenizer(work)
        voices = write_voices(list(sources.voices), work / "voices")
        parts.files += [f"voices/{v}.npz" for v in voices]
        source = {k: (v.name if isinstance(v, Path) else v) for k, v in
                  (("checkpoint", sources.checkpoint), ("mimi", sources.mimi), ("siglip", sources.siglip),
                   ("sensevoice", sources.sensevoice), ("campplus", sources.campplus))}
        if sources.checkpoint.is_file():
            source["checkpoint_sha256"] = sha256_file(sources.checkpoint)
        write_manifest(work, model.cfg, parts.graphs, parts.files, voices, source, parts.sections,
                       random_weights=random_weights)
        move_into_place(work, out)
        log.info("graphs and files exported (%.1f s)", time.perf_counter() - t0)
        return out
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def demo_bundle(out: Path, size: str, voice_files: list[Path], verify: bool, static: StaticShape | None = None,
                moe: bool = False) -> Path:
    """Random weights written in the released formats, then exported like a real checkpoint (a static bundle
    without the speech and speaker encoders, which have no static form yet); `moe`: the MoE model's."""
    from .random_checkpoint import write_random_pth
    from .random_mimi import write_random_mimi
    from .random_campplus import write_random_campplus
    from .random_sensevoice import write_random_sensevoice
    from .random_siglip import write_random_siglip
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(FULL if size == "full" else TINY, use_moe=moe)
        ckpt = write_random_pth(Path(tmp) / f"sft_omni_768{'_moe' if moe else ''}.pth", cfg, seed=0)
        mimi = write_random_mimi(Path(tmp) / "mimi", size=size, seed=0, rms_dbfs=DEMO_RMS_DBFS)
        siglip = write_random_siglip(Path(tmp) / "siglip2-base-p32-256-ve", size=size, seed=0)
        sensevoice = None if static else write_random_sensevoice(Path(tmp) / "SenseVoiceSmall", size=size, seed=0)
        campplus = None if static else write_random_campplus(Path(tmp) / "campplus" / "campplus_cn_common.pt", seed=0)
        log.info(RANDOM_WEIGHTS_NOTICE)
        return export_bundle(Sources(ckpt, mimi, siglip, sensevoice, tuple(voice_files), campplus), out, verify,
                             static, random_weights=True)


def build(args: argparse.Namespace) -> Path:
    """Export, quantize and convert inside a staging folder beside `--out`; only the finished bundle is moved
    into place, so an error or Ctrl-C at any stage leaves `--out` as it was."""
    static = StaticShape(args.context, args.prefill_chunk) if args.static else None
    if args.moe and args.checkpoint is not None:
        raise OmniError("--moe picks the release to download (--from-hub) or the demo's weights (--demo); a "
                        "--checkpoint is exported as what it holds (MoE if it has expert weights): drop --moe")
    if not args.demo:  # the paths given, before the first heavy import (torch, onnx: seconds; transformers: ~20 s)
        check_sources(static, args.checkpoint, args.mimi, args.siglip, args.sensevoice, tuple(args.voices),
                      args.campplus)
    check_out(args.out)
    from .common import ParityError
    staging = staging_dir(args.out)
    try:
        verify = not args.skip_verify
        fp32 = staging / "fp32"
        if args.demo:
            bundle = demo_bundle(fp32, args.demo_size, args.voices, verify, static, args.moe)
        else:
            if args.from_hub:
                from .hub import fetch_release
                r = fetch_release(HubSource(args.hub_mirror), args.moe)
                sources = Sources(r.checkpoint, r.mimi, r.siglip, None if static else r.sensevoice,
                                  tuple(args.voices), args.campplus)
            else:
                sources = Sources(args.checkpoint, args.mimi, args.siglip, args.sensevoice, tuple(args.voices),
                                  args.campplus)
            bundle = export_bundle(sources, fp32, verify, static)
        if args.precision != "fp32":
            from omni_onnx.bundle import Bundle
            from omni_onnx.quant.cli import quantize_bundle
            from omni_onnx.session import SessionOptions
            bundle = quantize_bundle(Bundle.open(bundle), RECIPES[args.precision], staging / args.precision,
                                     SessionOptions())
        if args.ort:  # last: the quantizer reads .onnx graphs, the converter works on any bundle
            from .ort_format import convert_bundle
            convert_bundle(bundle)
        move_into_place(bundle, args.out)
        return args.out
    except ParityError as e:
        raise OmniError(f"{one_line(e)}; the exported graph does not compute what the checkpoint does: report "
                        f"it with this command (--skip-verify writes the bundle unchecked)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def one_line(e: Exception) -> str:
    """A parity failure lists every failing output and case; the first says what is wrong, the count the rest."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    more = sum(x.startswith("- ") for x in lines) - 1
    first = next((x for x in lines if x.startswith("- ")), "")
    return f"{lines[0]} {first.removeprefix('- ')}" + (f" (and {more} more)" if more > 0 else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # WARNING on the root logger: onnxruntime's quantizer logs every tensor there at INFO (123 lines per export)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("omni-export", "omni-quant"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        require("omni-export", EXPORT_MODULES, EXPORT_INSTALL)
        out = build(args)
    except KeyboardInterrupt:
        print("omni-export: interrupted; nothing written", file=sys.stderr)
        return 130
    except MissingExtra as e:
        print(f"omni-export: error: {e}", file=sys.stderr)
        return 2
    except (OmniError, ValueError, OSError) as e:
        print(f"omni-export: error: {e}", file=sys.stderr)
        return 1
    print(f"bundle ready: {out}\nrun it: omni-run --bundle {out} --text \"Why is the sky blue?\" --out reply.wav")
    return 0


if __name__ == "__main__":
    sys.exit(main())
