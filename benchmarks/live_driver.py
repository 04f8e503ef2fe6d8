"""The app under test for the live suite: the real `omni-run --mic` (`omni_onnx.cli.main`) in a child process, with two
test doubles applied only here.

- The answer's audio becomes speech: each decoded frame is replaced by the next same-length piece of a recording
  (looped), plus a -60 dBFS noise floor. Random demo weights speak noise, which Silero VAD does not take for speech,
  so without this no echo test could fail. The floor keeps every played sample non-zero, so exact digital silence on
  the loudspeaker means the app played nothing (idle, underrun or cut), whatever pauses the recording has.
  Answers also speak until `--max-new-tokens`: the audio stop codes are never drawn. Random full-size weights end
  their audio within a second or two, and a barge-in or an echo needs an answer that is still speaking.
- The session's events are written as JSON lines as they happen (the benchmark waits on them), and at exit a summary
  with the speaker's underruns.

    python -m omni_onnx.bench.live_driver --events E.jsonl --summary S.json --voice a.wav -- --bundle B --mic ...

Everything that touches product internals is in `instrument`, so it can be re-pointed when the live code moves.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

NOISE_FLOOR = 1e-3  # RMS of the noise added to the answer's speech (-60 dBFS; 33 LSB of int16)


class LoopedVoice:
    """Successive pieces of a speech recording (24 kHz), looped, with a fixed-seed noise floor."""

    def __init__(self, pcm: np.ndarray, seed: int = 0):
        if len(pcm) == 0:
            raise ValueError("the voice recording is empty")
        self.pcm, self.pos = np.asarray(pcm, np.float32), 0
        self.rng = np.random.default_rng(seed)

    def next(self, n: int) -> np.ndarray:
        idx = (self.pos + np.arange(n)) % len(self.pcm)
        self.pos = (self.pos + n) % len(self.pcm)
        return (self.pcm[idx] + self.rng.normal(0.0, NOISE_FLOOR, n)).astype(np.float32)


class EventLog:
    """Appends one JSON line per event and flushes it, so another process can follow the session live."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, kind: str, t: float, text: str = "") -> None:
        self.f.write(json.dumps({"t": t, "kind": kind, "text": text}, ensure_ascii=False) + "\n")
        self.f.flush()


def instrument(voice: LoopedVoice, log: EventLog, summary: Path) -> None:
    """Patch the product: `Conversation.respond`'s AudioChunks carry `voice`; `LiveSession.run` streams its
    `log` calls to `log`, counts the speaker's underruns while an answer plays, and writes `summary` at exit.
    Answers never draw an audio stop code. Product names used: omni_onnx.model.{Conversation.respond, AudioChunk,
    Withdrawn, withdraw}, omni_onnx.codes.AudioCodeRing (its stop_from), omni_onnx.generate.sample_code,
    omni_onnx.sampling.sample_code, omni_onnx.live.LiveSession.{run, log,
    events, speaker, clock}, the speaker's `underruns`, and the event kinds first_audio / playback_stopped /
    answer_end."""
    from omni_onnx import codes, generate, live, model, sampling

    respond = model.Conversation.respond

    def voiced_respond(self, *args, **kwargs):
        answer = respond(self, *args, **kwargs)
        try:
            for ev in answer:
                yield model.AudioChunk(voice.next(len(ev.pcm))) if isinstance(ev, model.AudioChunk) else ev
        except model.Withdrawn:
            model.withdraw(answer)  # a prepared answer dropped: the product's too, the same way
            raise
        finally:
            answer.close()  # a barge-in closes this generator: close the product's at once too

    ring_init = codes.AudioCodeRing.__init__
    stop = {"from": None}

    def ring_noting_the_stop(ring, num_codebooks: int, pad_code: int, stop_from: int) -> None:
        stop["from"] = stop_from
        ring_init(ring, num_codebooks, pad_code, stop_from)

    def code_without_stop(logits, *args, **kwargs) -> int:
        logits = logits.copy()
        logits[stop["from"]:] = -np.inf
        return sampling.sample_code(logits, *args, **kwargs)

    run = live.LiveSession.run

    def logged_run(self) -> None:
        state = {"underruns": 0, "since": None}
        product_log = self.log

        def log_event(kind: str, text: str = "") -> None:
            product_log(kind, text)
            ev = self.events[-1]
            count = getattr(self.speaker, "underruns", 0)
            if kind == "first_audio":
                state["since"] = count
            elif kind in ("playback_stopped", "answer_end") and state["since"] is not None:
                state["underruns"] += count - state["since"]
                state["since"] = None
            log.write(ev.kind, ev.time, ev.text)

        self.log = log_event
        log.write("ready", self.clock())
        try:
            run(self)
        finally:
            doc = {"events": [{"t": e.time, "kind": e.kind, "text": e.text} for e in self.events],
                   "underruns_during_answers": state["underruns"],
                   "underruns_total": getattr(self.speaker, "underruns", None)}
            tmp = summary.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
            tmp.replace(summary)

    model.Conversation.respond = voiced_respond
    live.LiveSession.run = logged_run
    codes.AudioCodeRing.__init__ = ring_noting_the_stop
    generate.sample_code = code_without_stop


def load_voice(paths: list[Path], rate: int = 24000) -> np.ndarray:
    from omni_onnx.speech import load_audio

    import soxr
    return np.concatenate([soxr.resample(load_audio(p), 16000, rate).astype(np.float32) for p in paths])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("live_driver: give the omni-run arguments after --", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="live_driver", description=__doc__)
    p.add_argument("--events", type=Path, required=True, help="JSON lines, one per session event, written live")
    p.add_argument("--summary", type=Path, required=True, help="JSON written at exit: events and underruns")
    p.add_argument("--voice", type=Path, action="append", required=True, help="speech the answers are made of")
    a = p.parse_args(argv[:cut])
    # The benchmark ends the app with SIGINT (its Ctrl-C path). A shell without job control starts background
    # commands with SIGINT ignored, and Python keeps an inherited "ignore": every app was then killed after the
    # stop timeout, leaving no summary. Ctrl-C is what the app must answer to, so it is restored here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log = EventLog(a.events)
    instrument(LoopedVoice(load_voice(a.voice)), log, a.summary)
    from omni_onnx.cli import main as omni_run
    log.write("started", time.monotonic())
    return omni_run(argv[cut + 1:])


if __name__ == "__main__":
    sys.exit(main())
