"""omni-voices: clone a voice from a short recording, list voices, remove cloned ones.

  omni-voices add NAME ref.wav [--bundle B]   read about 3-6 s of clear speech; stored in the user data dir
  omni-voices list [--bundle B]               the bundle's presets and your voices
  omni-voices remove NAME                     delete one of your voices

Then `omni-run --voice NAME`. Cloning needs a bundle exported with --mimi and --campplus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .bundle import Bundle, default_bundle_dir
from .cloning import VoiceCloner, normalize_voice_name, read_recording
from .errors import OmniError
from .session import SessionOptions
from .user_voices import remove_user_voice, save_user_voice, user_voice_dir, voice_listing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omni-voices", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"omni-voices {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="clone a voice from a recording")
    add.add_argument("name", help="voice name (at most 24 characters; not 'default' or a preset's name)")
    add.add_argument("recording", type=Path, help="wav/flac/ogg/mp3 of 3-6 s of speech (longer is cut at 6 s)")
    add.add_argument("--bundle", type=Path, default=default_bundle_dir(), help="bundle with the cloning graphs")
    add.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    ls = sub.add_parser("list", help="list the bundle's presets and your voices")
    ls.add_argument("--bundle", type=Path, default=default_bundle_dir(), help="bundle whose presets to list")
    rm = sub.add_parser("remove", help="delete one of your voices")
    rm.add_argument("name")
    return p


def _presets(root: Path) -> list[str]:
    """The bundle's preset names, or none when no bundle is there (the user's voices are listed regardless)."""
    try:
        return Bundle.open(root, verify_checksums=False).voices
    except OmniError:
        return []


def add(args: argparse.Namespace) -> None:
    bundle = Bundle.open(args.bundle)
    name = normalize_voice_name(args.name, tuple(bundle.voices))
    cloner = VoiceCloner.from_bundle(bundle, SessionOptions(threads=args.threads))
    voice = cloner.clone(*read_recording(args.recording), name)
    path = save_user_voice(voice)
    print(f"voice {name!r} added ({voice.ref_codes.shape[1]} reference frames): {path}\n"
          f"use it: omni-run --bundle {args.bundle} --voice {name!r} --text \"Hello\" --out hello.wav")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "add":
            add(args)
        elif args.command == "list":
            lines = voice_listing(_presets(args.bundle))
            print("\n".join(lines) if lines else f"no voices (no bundle at {args.bundle}; user voices live in "
                                                 f"{user_voice_dir()})")
        else:
            print(f"removed {remove_user_voice(' '.join(args.name.split()))}")
    except OmniError as e:
        print(f"omni-voices: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
