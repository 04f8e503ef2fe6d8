"""The live suite: `omni-run --mic` on a real sound server, measured at the microphone and the loudspeaker.

Each scenario starts the app (`live_driver`: the real CLI code path in a child process, answers made of speech) on a
private PulseAudio server (`live_server`), speaks eval questions into the virtual microphone and records the
microphone feed and the loudspeaker as one 2-channel stream on one clock. Times come from that recording (clips
located by matched filter, the loudspeaker's digital silence); counts (interruptions, turns) from the app's events.

- latency: end of the question's speech -> first answer sound at the loudspeaker, per question.
- barge-in: a clip spoken ~1 s into the answer; its speech onset -> loudspeaker silent.
- echo: the loudspeaker looped into the microphone at each delay x gain; `interrupt` events with no user speaking.
- double-talk: barge-ins with echo present; how many the app noticed.
- pauses: a silent pause spliced into mid-question; how often the app answered before the question's real end.
Every scenario also counts underruns (the speaker's, while answers play) and `--record` gaps (silent runs in the
record file's played channel that the loudspeaker recording does not have).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from omni_onnx.errors import OmniError

from . import live_signal as sig
from .live_server import RATE, SoundServer, stop

SCENARIOS = ("latency", "barge-in", "echo", "double-talk", "pauses")
CLIP_DIRS = (Path(__file__).resolve().parent / "data",
             Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "eval_omni")
QUESTIONS = ("audio-en-01_what_do_you_usually_like_to_eat", "audio-en-05_why_is_the_sky_blue",
             "audio-en-04_please_introduce_spring_in_one_sentence", "audio-en-08_why_do_cats_like_catching_mice",
             "audio-en-10_how_many_kinds_of_animals_are_there_on_earth", "audio-en-11_why_does_it_snow_in_winter",
             "audio-en-12_how_do_i_make_a_good_cup_of_coffee")
BARGE_INS = ("audio-en-13_what_is_quantum_mechanics", "audio-en-07_what_is_a_black_hole",
             "audio-en-14_why_do_stars_twinkle")
VOICE = ("audio-en-06_how_can_we_maintain_a_healthy_lifestyle", "audio-en-09_how_can_i_improve_my_study_efficiency",
         "audio-en-02_what_fields_does_artificial_intelligence_include")  # what the answers sound like
NEXT_TURN_S = 0.3  # after a barge-in clip, the app waits for 320 ms of silence (plus the VAD's release) before it
# answers it: nothing it plays in this span after the clip is the next answer, so the last sound before it is where
# playback stopped
BARGE_AFTER_S = 1.0  # how far into the answer a barge-in is spoken
TURN_TAKEN = "speech_end"  # the event of the app taking the user's turn


@dataclass(frozen=True)
class LivePlan:
    """What the live suite runs; `of(quick)` is the default or the ~2 min smoke run."""
    scenarios: tuple[str, ...]
    questions: int  # latency
    barge_ins: int
    double_talk: int
    double_talk_echo: tuple[int, float]  # loopback latency ms, gain dB
    echo_delays_ms: tuple[int, ...]
    echo_gains_db: tuple[float, ...]
    echo_seconds: float  # answer time watched per delay x gain
    pauses_ms: tuple[int, ...]
    pause_questions: int  # per pause length

    @classmethod
    def of(cls, quick: bool, scenarios: tuple[str, ...] = SCENARIOS, repeats: int | None = None) -> LivePlan:
        if quick:
            plan = cls(scenarios, 2, 2, 3, (30, -6.0), (150,), (-6.0,), 6.0, (500,), 1)
        else:
            plan = cls(scenarios, 5, 5, 10, (30, -6.0), (30, 150, 300, 500), (-10.0, -6.0, 0.0), 12.0,
                       (300, 500, 700), 2)
        if repeats is not None:
            plan = cls(scenarios, repeats, repeats, repeats, plan.double_talk_echo, plan.echo_delays_ms,
                       plan.echo_gains_db, plan.echo_seconds, plan.pauses_ms, repeats)
        return plan


@dataclass(frozen=True)
class Clip:
    name: str
    wav: Path  # 48 kHz mono, what is spoken into the microphone
    pcm: np.ndarray  # the same samples
    onset: float  # seconds into the clip where speech starts / ends (5 ms RMS threshold)
    offset: float

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


def clip_path(name: str) -> Path:
    for d in CLIP_DIRS:
        if (d / f"{name}.mp3").is_file():
            return d / f"{name}.mp3"
    raise OmniError(f"the live suite needs the eval clip {name}.mp3 (in tests/fixtures/eval_omni of a source "
                    f"checkout); run omni-bench from the repository")


def make_clip(name: str, pcm: np.ndarray, work: Path) -> Clip:
    """A clip from 48 kHz samples, written where `paplay` reads it."""
    span = sig.speech_span(pcm, RATE)
    if span is None:
        raise OmniError(f"clip {name} holds no speech above the detection threshold")
    wav = work / f"{name}.wav"
    sf.write(wav, pcm, RATE, subtype="FLOAT")
    return Clip(name, wav, pcm, *span)


def load_clip(name: str, work: Path) -> Clip:
    import soxr

    from omni_onnx.speech import load_audio

    return make_clip(name, soxr.resample(load_audio(clip_path(name)), 16000, RATE).astype(np.float32), work)


class App:
    """One `omni-run --mic` child on the sound server, its live events and a recording of the devices."""

    def __init__(self, server: SoundServer, bundle: Path, work: Path, name: str, max_new_tokens: int,
                 threads: int, start_timeout: float = 300.0):
        self.server, self.name = server, name
        self.events_path, self.summary_path = work / f"{name}.events.jsonl", work / f"{name}.summary.json"
        self.record_path, self.log_path = work / f"{name}.record.wav", work / f"{name}.log"
        self.raw = work / f"{name}.rec.raw"
        voice = [a for v in VOICE for a in ("--voice", str(clip_path(v)))]
        cmd = [sys.executable, "-m", "omni_onnx.bench.live_driver", "--events", str(self.events_path),
               "--summary", str(self.summary_path), *voice, "--", "--bundle", str(bundle), "--mic",
               "--max-new-tokens", str(max_new_tokens), "--seed", "0", "--threads", str(threads),
               "--record", str(self.record_path)]
        self.events_path.touch()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=server.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.rec = None
        try:
            if self.wait_for("ready", 0.0, start_timeout) is None:
                raise OmniError(f"the app did not start listening within {start_timeout:g} s: {self.log_tail()}")
            self.rec, self.rec_t0 = server.record(self.raw)
            time.sleep(0.3)
        except BaseException:
            self.close()
            raise

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"

    def events(self) -> list[dict]:
        with open(self.events_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def times(self, kind: str, t0: float = 0.0, t1: float = float("inf")) -> list[float]:
        return [e["t"] for e in self.events() if e["kind"] == kind and t0 < e["t"] <= t1]

    def wait_for(self, kind: str, after: float, timeout: float) -> float | None:
        """The time of the first `kind` event after `after`, waiting up to `timeout` s; None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            hit = self.times(kind, after)
            if hit:
                return hit[0]
            if self.proc.poll() is not None:
                raise OmniError(f"the app exited (code {self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def wait_idle(self, timeout: float, quiet: float = 1.0) -> bool:
        """Until the last event ended an answer (or its history prefill, or nothing happened yet) and `quiet` s
        passed without events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = [e for e in self.events() if e["kind"] != "started"]
            if evs[-1]["kind"] in ("answer_end", "prefilled", "ready") and time.monotonic() - evs[-1]["t"] >= quiet:
                return True
            time.sleep(0.05)
        return False

    def say(self, clip: Clip) -> float:
        """Speak `clip` into the microphone and wait until it has been played; when it was started."""
        t = time.monotonic()
        self.server.play(clip.wav).wait()
        return t

    def stop(self) -> int:
        """Stop the recording and the app (SIGINT: its Ctrl-C path); the app's exit code."""
        if self.rec is not None:
            stop(self.rec)
        return stop(self.proc, timeout=30)

    def close(self) -> dict:
        """`stop`, then the app's summary (events, underruns)."""
        code = self.stop()
        if not self.summary_path.is_file():
            raise OmniError(f"the app left no summary (exit code {code}): {self.log_tail()}")
        return json.loads(self.summary_path.read_text(encoding="utf-8"))

    def recording(self) -> tuple[np.ndarray, np.ndarray]:
        """(microphone feed, loudspeaker), float at RATE."""
        a = np.fromfile(self.raw, "<i2")
        a = a[:len(a) // 2 * 2].reshape(-1, 2).astype(np.float32) / 32768
        return a[:, 0], a[:, 1]

    def find(self, mic: np.ndarray, clip: Clip, t: float) -> int:
        """Where `clip`, started at monotonic time `t`, begins in the recording."""
        expected = round((t - self.rec_t0) * RATE)
        return sig.locate(clip.pcm, mic, expected - RATE, expected + 2 * RATE)


def played_gaps(app: App, speaker: np.ndarray) -> dict:
    """Silent runs inside answers: at the loudspeaker, and in --record's played channel but not at the loudspeaker."""
    record, rate = sf.read(app.record_path, dtype="float32")
    played = record[:, 1]
    spk, rec = sig.gaps(speaker, RATE), sig.gaps(played, rate)
    a, b = sig.first_sound(played), sig.first_sound(speaker)
    offset = 0.0 if a is None or b is None else b / RATE - a / rate
    only_record = sig.matched_gaps(rec, spk, offset)
    return {"loudspeaker_gaps": len(spk), "loudspeaker_gap_ms": 1000 * sum(n for _, n in spk),
            "record_gaps": len(only_record), "record_gap_ms": 1000 * sum(n for _, n in only_record),
            "record_seconds": len(played) / rate}


def finish(app: App, out: dict) -> tuple[np.ndarray, np.ndarray]:
    """Close the app; add its underruns and gaps to `out`; the recording."""
    summary = app.close()
    mic, speaker = app.recording()
    out["underruns"] = summary["underruns_during_answers"]
    out.update(played_gaps(app, speaker))
    out["events"] = {k: sum(e["kind"] == k for e in summary["events"])
                     for k in (TURN_TAKEN, "first_audio", "interrupt", "playback_stopped", "answer_end")}
    return mic, speaker


def ms(samples: int | None) -> float | None:
    return None if samples is None else round(1000 * samples / RATE, 1)


def median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.median(vals)), 1) if vals else None


def run_latency(app: App, questions: list[Clip]) -> dict:
    """Each question, answered to the end: its speech offset -> the loudspeaker's first non-zero sample before the
    next question (none: the answer had no audio, as random full-size weights sometimes give)."""
    said = []
    for q in questions:
        t = app.say(q)
        first = app.wait_for("first_audio", t, 60)
        app.wait_idle(120)
        turn = app.times(TURN_TAKEN, t)
        said.append((q, t, None if first is None or not turn else 1000 * (first - turn[0])))
    out: dict = {}
    mic, speaker = finish(app, out)
    values = []
    for i, (q, t, compute) in enumerate(said):
        end = app.find(mic, q, t) + round(q.offset * RATE)
        until = app.find(mic, *said[i + 1][:2]) if i + 1 < len(said) else len(speaker)
        sound = sig.first_sound(speaker[:until], end)
        values.append({"question": q.name, "latency_ms": None if sound is None else ms(sound - end),
                       "turn_to_first_audio_ms": None if compute is None else round(compute, 1)})
    out.update(median_ms=median([v["latency_ms"] for v in values]), each=values)
    return out


def run_barge_ins(app: App, question: Clip, clips: list[Clip], n: int) -> dict:
    """`n` barge-ins, each ~1 s into an answer; the answer to one barge-in is where the next one is spoken."""
    trials, windows = [], []
    t = app.say(question)
    while len(trials) < n:
        first = app.wait_for("first_audio", t, 60)
        if first is None:  # no answer came: ask again
            app.wait_idle(60)
            t = app.say(question)
            continue
        time.sleep(max(0.0, first + BARGE_AFTER_S - time.monotonic()))
        clip = clips[len(trials) % len(clips)]
        t = app.say(clip)
        hit = app.wait_for("interrupt", t, max(0.0, t + clip.seconds + 0.5 - time.monotonic()))
        windows.append((t, t + clip.seconds + 0.5))
        trials.append((clip, t, hit is not None))
        if hit is None:  # missed: the answer plays on; start afresh once it has ended
            app.wait_idle(120)
            t = app.say(question)
    app.wait_idle(120)
    interrupts = app.times("interrupt")
    out: dict = {"barge_ins": n, "detected": sum(d for _, _, d in trials),
                 "self_interruptions": sum(not any(a < x <= b for a, b in windows) for x in interrupts)}
    mic, speaker = finish(app, out)
    each = []
    for clip, t, detected in trials:
        at = app.find(mic, clip, t)
        onset = at + round(clip.onset * RATE)
        playing = sig.first_sound(speaker[max(0, onset - RATE // 50):onset + 1]) is not None
        silent = sig.last_sound(speaker, onset, at + round((clip.offset + NEXT_TURN_S) * RATE)) if playing else None
        each.append({"clip": clip.name, "detected": detected, "playing_at_onset": playing,
                     "onset_to_silent_ms": ms(silent - onset) if detected and silent is not None else None})
    out.update(median_ms=median([e["onset_to_silent_ms"] for e in each]), each=each)
    return out


def run_echo(app: App, question: Clip, seconds: float) -> dict:
    """Self-interruptions in the `seconds` after the answer's first audio, with the echo on and no user speech."""
    t = app.say(question)
    first = app.wait_for("first_audio", t, 60)
    if first is not None:
        time.sleep(max(0.0, first + seconds - time.monotonic()))
    out: dict = {"self_interruptions": None if first is None else len(app.times("interrupt", first, first + seconds))}
    mic, speaker = finish(app, out)
    start = sig.first_sound(speaker, app.find(mic, question, t) + round(question.offset * RATE))
    out["played_s"] = 0.0
    if start is not None:  # how much of the window the loudspeaker played, and the echo's delay as recorded
        window = speaker[start:start + round(seconds * RATE)]
        out["played_s"] = round(float(np.mean(sig.window_rms(window, RATE) > sig.DIGITAL_ZERO)) * len(window) / RATE, 2)
        a, b = start + RATE // 2, start + RATE // 2 + 3 * RATE
        if b + RATE // 2 <= len(mic) and np.mean(sig.window_rms(speaker[a:b], RATE) > sig.DIGITAL_ZERO) > 0.5:
            out["recorded_echo_delay_ms"] = ms(sig.best_lag(mic[a:b + RATE // 2], speaker[a:b], RATE // 2))
    return out


def run_pauses(app: App, spliced: list[tuple[Clip, float]]) -> dict:
    """Each spliced question: answered before its real end (a false end of turn)? and the latency otherwise."""
    said = []
    for clip, _ in spliced:
        t = app.say(clip)
        app.wait_for("first_audio", t, 60)
        app.wait_idle(120)
        said.append((clip, t, app.times(TURN_TAKEN, t), bool(app.times("rejoin", t))))
    out: dict = {}
    mic, speaker = finish(app, out)
    each = []
    for (clip, pause_at), (_, t, turns, rejoined) in zip(spliced, said):
        early = rejoined or len(turns) > 1 or (bool(turns) and bool(turns[0] < t + clip.offset))
        end = app.find(mic, clip, t) + round(clip.offset * RATE)
        sound = sig.first_sound(speaker, end)
        each.append({"question": clip.name, "pause_at_s": round(pause_at, 3), "false_end_of_turn": early,
                     "latency_ms": None if early or sound is None else ms(sound - end)})
    out.update(false_end_of_turn=sum(e["false_end_of_turn"] for e in each), questions=len(each), each=each)
    return out


def attempt(start: Callable[[], App], scenario: Callable[[App], dict]) -> dict:
    """`scenario` on a freshly started app, or {"error": why} when the app fails (e.g. starved on a loaded
    machine), so that one failure does not lose the other scenarios' figures."""
    app = None
    try:
        app = start()
        return scenario(app)
    except BaseException as e:
        if app is not None:
            app.stop()
        if not isinstance(e, OmniError):
            raise
        return {"error": str(e)}


def pause_table(res: dict, pauses_ms: tuple[int, ...]) -> dict:
    by_pause = {}
    for p in pauses_ms:
        rows = [e for e in res["each"] if e["question"].endswith(f"+{p}ms")]
        by_pause[str(p)] = {"false_end_of_turn": sum(e["false_end_of_turn"] for e in rows),
                            "questions": len(rows), "median_latency_ms": median([e["latency_ms"] for e in rows])}
    return {**res, "by_pause_ms": by_pause}


def run_live(bundle: Path, plan: LivePlan, threads: int, progress) -> dict:
    """Every scenario of `plan` on one bundle, on a sound server started for it and stopped after."""
    out: dict = {"plan": asdict(plan), "load_average_start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="omni-live-bench-") as tmp, SoundServer() as server:
        work = Path(tmp)
        questions = [load_clip(q, work) for q in QUESTIONS]
        barges = [load_clip(b, work) for b in BARGE_INS]

        def app(name: str, max_new_tokens: int) -> Callable[[], App]:
            return lambda: App(server, bundle, work, name, max_new_tokens, threads)

        def with_echo(delay: int, gain: float, scenario: Callable[[App], dict]) -> Callable[[App], dict]:
            def run(a: App) -> dict:
                module = server.add_echo(delay, gain)
                try:
                    return scenario(a)
                finally:
                    server.remove_echo(module)
            return run

        if "latency" in plan.scenarios:
            out["latency"] = attempt(app("latency", 40), lambda a: run_latency(a, questions[:plan.questions]))
            progress()
        if "barge-in" in plan.scenarios:
            out["barge_in"] = attempt(app("barge-in", 200),
                                      lambda a: run_barge_ins(a, questions[0], barges, plan.barge_ins))
            progress()
        if "echo" in plan.scenarios:
            frames = int(plan.echo_seconds / 0.08) + 40
            out["echo"] = [{"delay_ms": d, "gain_db": g, **attempt(
                app(f"echo-{d}ms{g:+g}dB", frames),
                with_echo(d, g, lambda a: run_echo(a, questions[1], plan.echo_seconds)))}
                for d in plan.echo_delays_ms for g in plan.echo_gains_db]
            progress()
        if "double-talk" in plan.scenarios:
            delay, gain = plan.double_talk_echo
            out["double_talk"] = {"delay_ms": delay, "gain_db": gain, **attempt(
                app("double-talk", 200),
                with_echo(delay, gain, lambda a: run_barge_ins(a, questions[0], barges, plan.double_talk)))}
            progress()
        if "pauses" in plan.scenarios:
            spliced = []
            for p in plan.pauses_ms:
                for q in questions[:plan.pause_questions]:
                    pcm, at = sig.splice_pause(q.pcm, RATE, p / 1000)
                    spliced.append((make_clip(f"{q.name}+{p}ms", pcm, work), at))
            res = attempt(app("pauses", 40), lambda a: run_pauses(a, spliced))
            out["pauses"] = res if "error" in res else pause_table(res, plan.pauses_ms)
            progress()
    out["load_average_end"] = list(os.getloadavg())
    return out
