"""The `omni-run --mic` options and their wiring: devices, VAD and echo options, `--record`, clean Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .audio_io import BLOCK, MIC_RATE, DeviceMicrophone, device_speaker
from .audio_out import WavWriter
from .echo import EchoGuardOptions
from .errors import OmniError
from .generate import GenerationOptions
from .live import LiveOptions, LiveSession
from .model import Conversation
from .turns import TurnOptions
from .vad import SileroVad


def _device(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TurnOptions()
    g = p.add_argument_group("live conversation (--mic)")
    g.add_argument("--mic", action="store_true", help="talk to it: speak, pause, hear the answer; talk over the "
                                                      "answer to interrupt it. Ctrl-C ends")
    g.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    g.add_argument("--input-device", type=_device, help="microphone: number or name from --list-devices")
    g.add_argument("--output-device", type=_device, help="speakers: number or name from --list-devices")
    g.add_argument("--half-duplex", action="store_true", help="ignore the microphone while the assistant speaks "
                                                              "(no interrupting; safe with loud speakers)")
    g.add_argument("--no-echo-guard", action="store_true", help="with headphones: do not check the microphone "
                                                                "against the assistant's own playback")
    g.add_argument("--record", type=Path, help="write the session to this WAV (16 kHz; left: microphone, right: "
                                               "what was played)")
    g.add_argument("--vad-threshold", type=float, default=d.threshold, help="speech probability threshold")
    g.add_argument("--min-speech-ms", type=int, default=d.min_speech * 1000 // MIC_RATE,
                   help="speech that starts a turn")
    g.add_argument("--min-silence-ms", type=int, default=d.min_silence * 1000 // MIC_RATE,
                   help="silence that ends a turn")
    g.add_argument("--barge-in-ms", type=int, default=d.barge_in_speech * 1000 // MIC_RATE,
                   help="speech that interrupts the answer")


def live_options(args: argparse.Namespace) -> LiveOptions:
    ms = lambda v: int(v) * MIC_RATE // 1000
    turns = TurnOptions(threshold=args.vad_threshold, min_speech=ms(args.min_speech_ms),
                        min_silence=ms(args.min_silence_ms), barge_in_speech=ms(args.barge_in_ms))
    echo = None if args.no_echo_guard or args.half_duplex else EchoGuardOptions()
    return LiveOptions(turns, echo, args.half_duplex)


def open_devices(args: argparse.Namespace, sample_rate: int, frame_samples: int):
    """(microphone, speaker, clock) on the sound devices."""
    import time
    mic = DeviceMicrophone(args.input_device, BLOCK)
    try:
        return mic, device_speaker(sample_rate, frame_samples, args.output_device), time.monotonic
    except BaseException:
        mic.close()
        raise


def print_now(text: str) -> None:
    print(text, end="", flush=True)


def run_mic(conv: Conversation, args: argparse.Namespace, gen: GenerationOptions,
            rng: np.random.Generator | None) -> None:
    """Until the input ends or Ctrl-C; on the way out the speaker is cut, devices closed and --record flushed."""
    model = conv.model
    if model.mimi is None or model.speech is None:
        raise OmniError("--mic needs a bundle with the speech encoder and the Mimi decoder; re-export it with "
                        "--sensevoice <folder> --mimi <folder>")
    vad = SileroVad.from_bundle(model.bundle)
    opts = live_options(args)
    with ExitStack() as stack:  # on the way out, in order: cut playback, close speaker, microphone, --record
        record = None
        if args.record is not None:
            record = WavWriter(args.record, MIC_RATE, channels=2)
            stack.callback(record.close)
        mic, speaker, clock = open_devices(args, model.sample_rate, model.mimi.dims.frame_samples)
        stack.callback(mic.close)
        stack.callback(speaker.close)
        stack.callback(speaker.stop)  # a Ctrl-C must not wait for the answer to finish
        print("[listening: speak, then pause; Ctrl-C ends]", file=sys.stderr, flush=True)
        LiveSession(conv, vad, mic, speaker, clock, gen, rng, opts, record, print_now).run()
