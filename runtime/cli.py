"""omni-run: ask MiniMind-O something; the answer streams to the terminal and, as speech, to a WAV file or speakers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .audio_out import Player, WavWriter, check_writable
from .bundle import Bundle, default_bundle_dir
from .dump import CodeDump
from .errors import OmniError
from .generate import GenerationOptions
from .model import AudioChunk, Conversation, OmniModel, TextDelta, Transcript, TurnEnd
from .sampling import TextSampling
from .live_cli import add_arguments as add_live_arguments
from .web.cli import add_arguments as add_serve_arguments
from .session import SessionOptions
from .user_voices import voice_listing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omni-run", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", type=Path, default=default_bundle_dir(), help="bundle folder written by omni-export")
    p.add_argument("--text", help="the question; without it an interactive chat starts")
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="an image to ask about (repeatable: each gets its own 64 placeholders)")
    p.add_argument("--audio", type=Path, help="a spoken question (wav/flac/ogg/mp3, any rate); one per turn, since "
                                              "upstream fills only the first speech placeholder run")
    p.add_argument("--show-transcript", action="store_true", help="print what the speech encoder heard")
    p.add_argument("--out", type=Path, help="write the spoken answer to this WAV file (24 kHz); in chat mode "
                                            "turn N goes to NAME-N.wav")
    p.add_argument("--play", action="store_true", help="play the answer as it is generated")
    p.add_argument("--voice", help="speaker preset or your cloned voice (see --list-voices; omni-voices add); "
                                   "default: the model's own voice")
    p.add_argument("--list-voices", action="store_true", help="list the bundle's presets and your voices, and exit")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seed", type=int, help="seed for reproducible sampling; without it each run differs")
    g.add_argument("--greedy", action="store_true", help="argmax instead of sampling (penalties still apply)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="bound on text plus the audio tail")
    p.add_argument("--temperature", type=float, default=0.7, help="text sampling temperature")
    p.add_argument("--top-p", type=float, default=0.85, help="text nucleus sampling threshold")
    p.add_argument("--dump-codes", type=Path, help="write prompt ids, text ids, audio codes and frames as JSON")
    p.add_argument("--context", type=int, default=2048, help="KV cache capacity in positions (prompt + answer)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    add_live_arguments(p)
    add_serve_arguments(p)
    p.add_argument("--version", action="version", version=f"omni-run {__version__}")
    return p


class AudioSinks:
    """Where decoded frames go for one turn: a WAV file, the speakers, or both."""

    def __init__(self, out: Path | None, player: Player | None, sample_rate: int):
        self.wav = WavWriter(out, sample_rate) if out is not None else None
        self.player = player

    def write(self, pcm: np.ndarray) -> None:
        if self.wav is not None:
            self.wav.write(pcm)
        if self.player is not None:
            self.player.write(pcm)

    def close(self) -> None:
        if self.wav is not None:
            self.wav.close()


def run_turn(conv: Conversation, text: str | None, args: argparse.Namespace, opts: GenerationOptions,
             rng: np.random.Generator | None, out: Path | None, player: Player | None,
             images: tuple[Path, ...] = (), audio: Path | None = None) -> TurnEnd:
    record = CodeDump([]) if args.dump_codes else None
    sinks = AudioSinks(out, player, conv.model.sample_rate)
    end = None
    try:
        for ev in conv.respond(text, opts, rng, decode_audio=out is not None or player is not None, record=record,
                               images=images, audio=audio):
            if isinstance(ev, Transcript):
                if args.show_transcript:
                    print(f"[heard: {ev.text}]", flush=True)
            elif isinstance(ev, TextDelta):
                print(ev.text, end="", flush=True)
            elif isinstance(ev, AudioChunk):
                sinks.write(ev.pcm)
            else:
                end = ev
    finally:
        sinks.close()
    print()
    if end.reason != "eos":
        print(f"[stopped: {'max-new-tokens reached' if end.reason == 'length' else 'context full'}]", file=sys.stderr)
    if record is not None:
        record.write(args.dump_codes)
    return end


def chat(conv: Conversation, args, opts, rng, player) -> None:
    """Interactive turns; history (and the KV cache of its unchanged prefix) carries over. /reset clears it;
    `/image PATH` and `/audio PATH` attach a file to the next turn."""
    turn, attached, spoken = 0, list(args.image), args.audio
    while True:
        try:
            text = input("you> ")
        except EOFError:
            print()
            return
        if text.strip() in ("/quit", "/exit"):
            return
        if text.strip() == "/reset":
            conv = Conversation(conv.model, args.voice, args.context)
            continue
        if text.startswith("/image "):
            attached.append(Path(text[len("/image "):].strip()))
            print(f"[attached {attached[-1]} to the next turn]")
            continue
        if text.startswith("/audio "):
            spoken = Path(text[len("/audio "):].strip())
            print(f"[attached {spoken} to the next turn; press Enter to send it alone]")
            continue
        if not text.strip() and spoken is None:
            continue
        turn += 1
        out = args.out.with_name(f"{args.out.stem}-{turn}{args.out.suffix}") if args.out else None
        print("omni> ", end="", flush=True)
        try:
            run_turn(conv, text, args, opts, rng, out, player, tuple(attached), spoken)
        except OmniError as e:  # a bad attachment should not end the chat
            print(f"\nomni-run: error: {e}", file=sys.stderr)
        attached, spoken = [], None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.list_devices:
            from .audio_io import list_devices
            print(list_devices())
            return 0
        if args.list_voices:
            print("\n".join(voice_listing(Bundle.open(args.bundle, verify_checksums=False).voices)))
            return 0
        if args.text is not None and not args.text.strip() and not args.image and args.audio is None:
            raise OmniError("--text is empty; give a question, or leave --text out to chat")
        for path in (args.out, args.dump_codes, args.record):
            if path is not None:
                check_writable(path)
        opts = GenerationOptions(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                                 text=TextSampling(temperature=args.temperature, top_p=args.top_p))
        if args.serve:
            from .web.cli import serve
            return serve(args, opts)
        model = OmniModel.load(args.bundle, SessionOptions(threads=args.threads))
        conv = Conversation(model, args.voice, args.context)
        rng = None if args.greedy else np.random.default_rng(args.seed)
        if args.mic:
            from .live_cli import run_mic
            run_mic(conv, args, opts, rng)
            return 0
        if args.play and model.mimi is None:
            raise OmniError("--play needs a bundle with the Mimi decoder; re-export it with --mimi <folder>")
        player = Player(model.sample_rate, model.mimi.dims.frame_samples) if args.play else None
        try:
            if args.text is not None or args.image or args.audio is not None:
                run_turn(conv, args.text, args, opts, rng, args.out, player, tuple(args.image), args.audio)
            else:
                chat(conv, args, opts, rng, player)
        finally:
            if player is not None:
                player.close()
    except (OmniError, ValueError) as e:
        print(f"omni-run: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
