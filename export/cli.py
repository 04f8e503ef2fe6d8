"""omni-export: turn a released MiniMind-O checkpoint (+ Mimi) into a bundle that omni-run loads without torch."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from omni_onnx.bundle import MANIFEST, default_bundle_dir, sha256_file
from omni_onnx.config import FULL, TINY
from omni_onnx.contracts import talker_spec, thinker_spec

from . import talker, thinker
from .bundle_writer import copy_tokenizer, write_manifest
from .checkpoint import load_model
from .hub import HubSource, fetch_release
from .voices import RELEASED_VOICE_FILES, write_voices

log = logging.getLogger("omni-export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omni-export", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="upstream .pth (sft_omni_768[_moe].pth) or transformers folder")
    src.add_argument("--from-hub", action="store_true", help="download the released weights first")
    src.add_argument("--demo", action="store_true", help="random weights in the released formats (offline demo)")
    p.add_argument("--mimi", type=Path, help="Hugging Face Mimi folder (kyutai/mimi); without it no speech audio")
    p.add_argument("--voices", type=Path, nargs="*", default=list(RELEASED_VOICE_FILES),
                   help="voices.pt files to convert (default: the released presets)")
    p.add_argument("--out", type=Path, default=default_bundle_dir(), help="bundle folder to write")
    p.add_argument("--moe", action="store_true", help="with --from-hub: the MoE release")
    p.add_argument("--hub-mirror", type=Path, help="with --from-hub: a local folder laid out as <owner>/<name>/")
    p.add_argument("--demo-size", choices=("tiny", "full"), default="tiny", help="with --demo: model size")
    p.add_argument("--skip-verify", action="store_true", help="skip the torch-vs-onnxruntime parity checks")
    return p


def export_bundle(checkpoint: Path, mimi_dir: Path | None, voice_files: list[Path], out: Path,
                  verify: bool = True) -> Path:
    """Export every graph into a fresh folder, then move it into place, so a failed export leaves no half bundle."""
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"{out} exists and is not a bundle; choose an empty or new --out folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        model = load_model(checkpoint)
        graphs = {}
        for name, mod, spec in (("thinker", thinker, thinker_spec), ("talker", talker, talker_spec)):
            path = mod.export(model, work)
            if verify:
                mod.verify(model, path)
            graphs[name] = (path, spec(model.cfg))
            log.info("%s: %s (%.1f s)", name, path.name, time.perf_counter() - t0)
        mimi_meta = None
        if mimi_dir is not None:
            from omni_onnx.contracts import mimi_decoder_spec

            from . import mimi_decoder
            mimi = mimi_decoder.load_mimi(mimi_dir)
            dims = mimi_decoder.mimi_dims(mimi)
            path = mimi_decoder.export(mimi, work / "mimi_decoder.onnx")
            if verify:
                mimi_decoder.verify(mimi, path)
            graphs["mimi_decoder"] = (path, mimi_decoder_spec(dims))
            mimi_meta = dims.to_dict()
            log.info("mimi_decoder: %s (%.1f s)", path.name, time.perf_counter() - t0)
        files = copy_tokenizer(work)
        voices = write_voices(voice_files, work / "voices")
        files += [f"voices/{v}.npz" for v in voices]
        source = {"checkpoint": checkpoint.name, "mimi": mimi_dir.name if mimi_dir else None}
        if checkpoint.is_file():
            source["checkpoint_sha256"] = sha256_file(checkpoint)
        write_manifest(work, model.cfg, graphs, files, voices, source, mimi_meta)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
        log.info("bundle written to %s (%.1f s)", out, time.perf_counter() - t0)
        return out
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def demo_bundle(out: Path, size: str, voice_files: list[Path], verify: bool) -> Path:
    """Random weights written in the released formats, then exported like a real checkpoint."""
    from .random_checkpoint import write_random_pth
    from .random_mimi import write_random_mimi
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_pth(Path(tmp) / "sft_omni_768.pth", FULL if size == "full" else TINY, seed=0)
        mimi = write_random_mimi(Path(tmp) / "mimi", size=size, seed=0)
        return export_bundle(ckpt, mimi, voice_files, out, verify)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        if args.demo:
            out = demo_bundle(args.out, args.demo_size, args.voices, not args.skip_verify)
        elif args.from_hub:
            ckpt, mimi = fetch_release(HubSource(args.hub_mirror), args.moe)
            out = export_bundle(ckpt, mimi, args.voices, args.out, not args.skip_verify)
        else:
            if not args.checkpoint.exists():
                raise ValueError(f"checkpoint {args.checkpoint} does not exist")
            out = export_bundle(args.checkpoint, args.mimi, args.voices, args.out, not args.skip_verify)
    except ValueError as e:
        print(f"omni-export: error: {e}", file=sys.stderr)
        return 1
    print(f"bundle ready: {out}\nrun it: omni-run --bundle {out} --text \"Why is the sky blue?\" --out reply.wav")
    return 0


if __name__ == "__main__":
    sys.exit(main())
