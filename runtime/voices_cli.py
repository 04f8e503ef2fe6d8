"""omni-voices: clone a voice from a short recording, list voices, remove cloned ones.

  omni-voices add NAME ref.wav [--bundle B] [--force]   read about 3-6 s of clear speech; stored in the user data dir
  omni-voices list [--bundle B]                         the bundle's presets and your voices (damaged ones marked)
  omni-voices remove NAME                               delete one of your voices

Then `omni-run --voice NAME`. Cloning needs a bundle exported with --mimi and --campplus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .bundle import Bundle, default_bundle_dir
from .cli_support import (TERMINATED_EXIT, HelpFormatter, OneLineErrorParser, Terminated, announce_demo, int_at_least,
                          stop_cleanly_on_sigterm)
from .cloning import VoiceCloner, normalize_voice_name, read_recording
from .errors import OmniError
from .session import SessionOptions
from .user_voices import remove_user_voice, refuse_existing, save_user_voice, user_voice_dir, voice_listing


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="omni-voices", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"omni-voices {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="clone a voice from a recording", formatter_class=HelpFormatter)
    add.add_argument("name", help="voice name (at most 24 characters; not 'default' or a preset's name)")
    add.add_argument("recording", type=Path, help="wav/flac/ogg/mp3 of 3-6 s of speech (longer is cut at 6 s)")
    add.add_argument("--force", action="store_true", help="replace your voice of the same name")
    add.add_argument("--bundle", type=Path, default=default_bundle_dir(), help="bundle with the cloning graphs")
    add.add_argument("--threads", type=int_at_least(0), default=0,
                     help="onnxruntime intra-op threads (0: one per core)")
    ls = sub.add_parser("list", help="list the bundle's presets and your voices", formatter_class=HelpFormatter)
    ls.add_argument("--bundle", type=Path, default=default_bundle_dir(), help="bundle whose presets to list")
    rm = sub.add_parser("remove", help="delete one of your voices", formatter_class=HelpFormatter)
    rm.add_argument("name")
    rm.add_argument("--bundle", type=Path, default=default_bundle_dir(),
                    help="bundle whose presets to recognise (they cannot be removed)")
    return p


def _bundle(root: Path) -> Bundle | None:
    """The bundle, for its presets; None when there is none (the user's voices are listed and removed regardless)."""
    try:
        bundle = Bundle.open(root, verify_checksums=False)
    except OmniError:
        return None
    announce_demo(bundle, "omni-voices")
    return bundle


def add(args: argparse.Namespace) -> None:
    if not args.name.strip():
        raise OmniError("the voice name is empty; give one, e.g. omni-voices add anna recording.wav")
    bundle = Bundle.open(args.bundle)
    announce_demo(bundle, "omni-voices")
    name = normalize_voice_name(args.name, tuple(bundle.voices))
    refuse_existing(name, args.force)  # before the cloning work; saving checks again
    cloner = VoiceCloner.from_bundle(bundle, SessionOptions(threads=args.threads))
    voice = cloner.clone(*read_recording(args.recording), name)
    path = save_user_voice(voice, force=args.force)
    print(f"voice {name!r} added ({voice.ref_codes.shape[1]} reference frames): {path}\n"
          f"use it: omni-run --bundle {args.bundle} --voice {name!r} --text \"Hello\" --out hello.wav")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stop_cleanly_on_sigterm():
            if args.command == "add":
                add(args)
            elif args.command == "list":
                bundle = _bundle(args.bundle)
                lines = voice_listing(bundle.voices, bundle.voice_path) if bundle else voice_listing([])
                print("\n".join(lines) if lines else f"no voices (no bundle at {args.bundle}; user voices live in "
                                                     f"{user_voice_dir()})")
            else:
                bundle = _bundle(args.bundle)
                path = remove_user_voice(" ".join(args.name.split()), bundle.voices if bundle else [])
                print(f"removed {path}")
    except OmniError as e:
        print(f"omni-voices: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    except Terminated:
        print("\n[terminated]", file=sys.stderr)
        return TERMINATED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
