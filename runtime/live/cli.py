"""The `omni-run --mic` options and their wiring: devices, VAD, turn and echo options, `--record`, clean Ctrl-C, and
one line (not PortAudio's own error text) when the sound server goes away."""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from ..audio_out import WavWriter
from ..errors import OmniError
from ..generate import GenerationOptions
from ..model import Conversation
from .devices import BLOCK, MIC_RATE, DeviceMicrophone, device_speaker
from .echo import EchoOptions
from .session import LiveOptions, LiveSession
from .turns import TurnOptions
from .vad import SileroVad

# What PortAudio and the ALSA library print straight to file descriptor 2 (a lost sound server gives dozens of lines).
NATIVE_NOISE = re.compile(rb"^(ALSA lib |Expression '|PaAlsa|PaUnixThread|pa_linux_alsa|Cannot connect to server|"
                          rb"jack server|JackShmReadWritePtr|Assertion '.*' failed)")


def _device(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TurnOptions()
    ms = lambda samples: samples * 1000 // MIC_RATE
    g = p.add_argument_group("live conversation (--mic)")
    g.add_argument("--mic", action="store_true", help="talk to it: speak, pause, hear the answer; talk over the "
                                                      "answer to interrupt it. Ctrl-C ends")
    g.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    g.add_argument("--input-device", type=_device, help="microphone: number or name from --list-devices, or a "
                                                        "PulseAudio/PipeWire source name (pactl list short sources)")
    g.add_argument("--output-device", type=_device, help="speakers: number or name from --list-devices, or a "
                                                         "PulseAudio/PipeWire sink name (pactl list short sinks)")
    g.add_argument("--echo", choices=("cancel", "guard", "off"), default="cancel",
                   help="keeping its own voice out of the microphone: cancel (WebRTC echo canceller), guard (a "
                        "level check, without the canceller's package), off (headphones)")
    g.add_argument("--half-duplex", action="store_true", help="ignore the microphone while the assistant speaks "
                                                              "(no interrupting; safe with loud speakers)")
    g.add_argument("--record", type=Path, help="write the session to this WAV (16 kHz; left: microphone, right: "
                                               "what was played)")
    g.add_argument("--vad-threshold", type=float, default=d.threshold, help="speech probability threshold")
    g.add_argument("--min-speech-ms", type=int, default=ms(d.min_speech), help="speech that starts a turn")
    g.add_argument("--min-silence-ms", type=int, default=ms(d.min_silence), help="silence that ends a turn")
    g.add_argument("--pause-ms", type=int, default=ms(d.pause),
                   help="silence at which the answer starts being prepared (not played)")
    g.add_argument("--barge-in-ms", type=int, default=ms(d.barge_in_speech),
                   help="speech that interrupts the answer")


def live_options(args: argparse.Namespace) -> LiveOptions:
    samples = lambda v: int(v) * MIC_RATE // 1000
    try:
        turns = TurnOptions(threshold=args.vad_threshold, min_speech=samples(args.min_speech_ms),
                            pause=samples(args.pause_ms), min_silence=samples(args.min_silence_ms),
                            barge_in_speech=samples(args.barge_in_ms))
    except ValueError as e:
        raise OmniError(f"live options: {e}; check --vad-threshold, --min-speech-ms, --pause-ms, --min-silence-ms "
                        f"and --barge-in-ms") from None
    return LiveOptions(turns, EchoOptions.named("off" if args.half_duplex else args.echo), args.half_duplex)


def open_devices(args: argparse.Namespace, sample_rate: int):
    """(microphone, speaker, clock) on the sound devices."""
    import time
    mic = DeviceMicrophone(args.input_device, BLOCK)
    try:
        return mic, device_speaker(sample_rate, args.output_device), time.monotonic
    except BaseException:
        mic.close()
        raise


@contextmanager
def native_errors_filtered():
    """While the devices are open, file descriptor 2 goes through a pipe that drops PortAudio's and ALSA's own lines
    and passes every other one on (they would land in the middle of the answer's text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not NATIVE_NOISE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the pump sees its end
        thread.join(timeout=1.0)
        os.close(saved)


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
            record = WavWriter(args.record, MIC_RATE, channels=2, flag="--record")
            stack.callback(record.close)
        stack.enter_context(native_errors_filtered())
        mic, speaker, clock = open_devices(args, model.sample_rate)
        stack.callback(mic.close)
        stack.callback(speaker.close)
        stack.callback(speaker.stop)  # a Ctrl-C must not wait for the answer to finish
        print("[listening: speak, then pause; Ctrl-C ends]", file=sys.stderr, flush=True)
        session = LiveSession(conv, vad, mic, speaker, clock, gen, rng, opts, record, print_now)
        try:
            session.run()
        finally:
            if speaker.underruns:
                print(f"[{speaker.underruns} playback underruns: the machine fell behind]", file=sys.stderr)
