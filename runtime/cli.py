"""omni-run: ask MiniMind-O something; the answer streams to the terminal and, as speech, to a WAV file or speakers."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from functools import partial
from pathlib import Path

import numpy as np

from . import __version__
from .atomic_file import check_output_path
from .audio_out import Player, WavWriter
from .bundle import Bundle, default_bundle_dir
from .chat import AnswerStop, Chat
from .cli_support import (TERMINATED_EXIT, HelpFormatter, OneLineErrorParser, Terminated, announce_demo, float_in,
                          int_at_least, stop_cleanly_on_sigterm)
from .dump import CodeDump
from .errors import OmniError
from .generate import GenerationOptions
from .mimi import STEADY_FRAMES_PER_CALL
from .model import DEFAULT_CONTEXT, AudioChunk, Conversation, OmniModel, TextDelta, Transcript, TurnEnd
from .sampling import TextSampling
from .live.cli import add_arguments as add_live_arguments
from .web.cli import add_arguments as add_serve_arguments
from .session import SessionOptions
from .user_voices import voice_listing



def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="omni-run", description=__doc__, formatter_class=HelpFormatter)
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
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=512, help="bound on text plus the audio tail")
    p.add_argument("--temperature", type=float_in(0, math.inf), default=0.7, help="text sampling temperature")
    p.add_argument("--top-p", type=float_in(0, 1, low_open=True), default=0.85,
                   help="text nucleus sampling threshold")
    p.add_argument("--dump-codes", type=Path, help="write prompt ids, text ids, audio codes and frames as JSON")
    p.add_argument("--context", type=int_at_least(16), help=f"KV cache capacity in positions (prompt + answer); "
                   f"default {DEFAULT_CONTEXT}. A static bundle's context is fixed when it is exported")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="onnxruntime intra-op threads (0: one per core)")
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
        """The WAV is complete: move it into place."""
        if self.wav is not None:
            self.wav.close()

    def discard(self) -> None:
        """The turn failed: no WAV, and an existing file at --out stays as it was."""
        if self.wav is not None:
            self.wav.discard()


def run_turn(conv: Conversation, text: str | None, args: argparse.Namespace, opts: GenerationOptions,
             rng: np.random.Generator | None, out: Path | None, player: Player | None,
             images: tuple[Path, ...] = (), audio: Path | None = None, stop: AnswerStop | None = None) -> None:
    """One answer, streamed. Its WAV and --dump-codes appear only when it ends (at EOS, a limit, or stopped by
    `stop`), each whole; if it fails or the process is interrupted, neither appears and existing files stay."""
    record = CodeDump([]) if args.dump_codes else None
    sinks = AudioSinks(out, player, conv.model.sample_rate)
    events = conv.respond(text, opts, rng, decode_audio=out is not None or player is not None, record=record,
                          images=images, audio=audio, mimi_frames_per_call=STEADY_FRAMES_PER_CALL)
    reason = "stopped"
    try:
        for ev in events:
            if isinstance(ev, Transcript):
                if args.show_transcript:
                    print(f"[heard: {ev.text}]", flush=True)
            elif isinstance(ev, TextDelta):
                print(ev.text, end="", flush=True)
            elif isinstance(ev, AudioChunk):
                sinks.write(ev.pcm)
            elif isinstance(ev, TurnEnd):
                reason = ev.reason
            if stop is not None and stop.requested:
                events.close()  # the answer enters the history as far as it got
                break
    except BaseException:
        sinks.discard()
        raise
    print()
    sinks.close()
    if record is not None:
        record.write(args.dump_codes)
    if reason != "eos":
        why = {"length": "max-new-tokens reached", "context": "context full", "stopped": "you stopped it"}[reason]
        print(f"[stopped: {why}]", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with stop_cleanly_on_sigterm():
            return run(args)
    except (OmniError, ValueError) as e:
        print(f"omni-run: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    except Terminated:
        print("\n[terminated]", file=sys.stderr)
        return TERMINATED_EXIT


def run(args: argparse.Namespace) -> int:
    if args.list_devices:
        from .live.devices import list_devices
        print(list_devices())
        return 0
    if args.list_voices:
        bundle = Bundle.open(args.bundle, verify_checksums=False)
        announce_demo(bundle, "omni-run")
        print("\n".join(voice_listing(bundle.voices, bundle.voice_path)))
        return 0
    if args.text is not None and not args.text.strip() and not args.image and args.audio is None:
        raise OmniError("--text is empty; give a question, or leave --text out to chat")
    for flag, path, suffixes in (("--out", args.out, (".wav",)), ("--dump-codes", args.dump_codes, ()),
                                 ("--record", args.record, (".wav",))):
        if path is not None:
            check_output_path(path, flag, suffixes)
    opts = GenerationOptions(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                             text=TextSampling(temperature=args.temperature, top_p=args.top_p))
    if args.serve:
        from .web.cli import serve
        return serve(args, opts)
    model = OmniModel.load(args.bundle, SessionOptions(threads=args.threads))
    announce_demo(model.bundle, "omni-run")
    if model.static is not None and args.context not in (None, model.static.context):
        raise OmniError(f"--context {args.context}: this static bundle's context is fixed at {model.static.context} "
                        f"positions; leave --context out, or re-export it with "
                        f"`omni-export --static --context {args.context}`")
    start = partial(Conversation, model, args.voice, args.context or DEFAULT_CONTEXT)
    conv = start()
    rng = None if args.greedy else np.random.default_rng(args.seed)
    if args.mic:
        from .live.cli import run_mic
        run_mic(conv, args, opts, rng)
        return 0
    if args.play and model.mimi is None:
        raise OmniError("--play needs a bundle with the Mimi decoder; re-export it with --mimi <folder>")
    player = Player(model.sample_rate, model.mimi.dims.frame_samples) if args.play else None
    try:
        if args.text is not None or args.image or args.audio is not None:
            run_turn(conv, args.text, args, opts, rng, args.out, player, tuple(args.image), args.audio)
        else:
            answer = partial(run_turn, args=args, opts=opts, rng=rng, player=player)
            Chat(start, answer, args.out, args.image, args.audio).run()
    finally:
        if player is not None:
            player.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
