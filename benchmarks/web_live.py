"""The web page's live figures: `python -m omni_onnx.bench.web_live --bundle B [--out DIR]`.

1. In a real browser (headless Chromium, its fake microphone playing an eval question, a pause, then a barge-in
   clip, paced in real time), against `omni-run --serve` run as its own process: end of speech -> first answer
   audio played by the page, and barge-in onset -> the page's playback stopped, both taken from the page's own
   capture and playback worklets (`window.omniStats`).
2. Concurrent tabs (WebSocket clients speaking the page's protocol, each streaming a question in real time and
   playing the answer on a simulated 24 kHz clock that starts with the first frame): the most tabs answered at
   once with no underrun.

Figures depend on the machine and its load; the results record both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .cdp import Chromium

CLIPS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "eval_omni"
QUESTIONS = ["audio-en-05_why_is_the_sky_blue.mp3", "audio-en-07_what_is_a_black_hole.mp3",
             "audio-en-11_why_does_it_snow_in_winter.mp3", "audio-en-14_why_do_stars_twinkle.mp3",
             "audio-en-04_please_introduce_spring_in_one_sentence.mp3"]
BARGE = "audio-en-13_what_is_quantum_mechanics.mp3"
RATE = 16000
LOUD = 0.02  # -34 dBFS: speech onset/offset in the clips, independent of the VAD (as tests/test_live.py)


def load16k(name: str) -> np.ndarray:
    from omni_onnx.speech import load_audio
    return load_audio(CLIPS / name)


def speech_span(clip: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(clip) > LOUD)
    return int(loud[0]), int(loud[-1])


@dataclass(frozen=True)
class MicScript:
    """The fake microphone's WAV: lead silence, question, pause, barge-in clip, tail silence (16 kHz)."""
    pcm: np.ndarray
    question_onset: int  # samples
    question_end: int
    barge_onset: int | None

    @classmethod
    def build(cls, question: np.ndarray, barge: np.ndarray | None, lead: float = 1.0, pause: float = 3.5,
              tail: float = 2.0) -> MicScript:
        z = lambda s: np.zeros(int(s * RATE), np.float32)
        q_on, q_end = speech_span(question)
        parts = [z(lead), question, z(pause)]
        barge_onset = None
        if barge is not None:
            barge_onset = len(np.concatenate(parts)) + speech_span(barge)[0]
            parts.append(barge)
        pcm = np.concatenate(parts + [z(tail)])
        return cls(pcm, len(z(lead)) + q_on, len(z(lead)) + q_end, barge_onset)

    def write(self, path: Path) -> Path:
        sf.write(path, self.pcm, RATE, subtype="PCM_16")
        return path

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


@dataclass(frozen=True)
class PageRun:
    turn_detected: bool
    deltas: int  # text deltas shown while the answer streamed
    answer_text: str
    frames_received: int
    samples_played: int
    underruns: int
    stops: int
    played_after_stop: int  # samples the page played in the 0.5 s after it stopped (0: playback really stopped)
    first_audio_ms: float | None  # end of the question's speech -> first answer sample played
    turn_ms: float | None  # end of the question's speech -> the server's end-of-turn event at the page
    barge_ms: float | None  # barge-in onset -> the page's playback stopped


def start_server(bundle: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    """`omni-run --serve` on a free loopback port; (process, page URL)."""
    cmd = [sys.executable, "-m", "omni_onnx", "--bundle", str(bundle), "--serve", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"\[serving (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.wait()
    raise RuntimeError("omni-run --serve did not start:\n" + "".join(lines))


def wall(stats: dict, script: MicScript, sample: int) -> float:
    """performance.now() at which the page captured `sample` of the script: the question's onset is found in the
    capture (first block above -34 dBFS) and the capture's sample clock carries it to any other sample."""
    cap = np.array(stats["captured"], np.float64)  # [perf_ms, captured_samples_at_block_end, rms]
    onset_block = int(np.argmax(cap[:, 2] > LOUD))
    capture_onset = cap[onset_block, 1] - 256  # mid-block: +-16 ms
    offset = float(np.min(cap[:, 0] - cap[:, 1] / (RATE / 1000)))  # perf_ms of capture sample 0
    return offset + (capture_onset + sample - script.question_onset) / (RATE / 1000)


def page_session(url: str, script: MicScript, wav: Path, screenshot: Path | None = None,
                 timeout: float = 60.0) -> PageRun:
    script.write(wav)
    with Chromium(wav) as browser:
        browser.open(url)
        browser.wait_for("window.omniStats && omniStats.connected", 20, "the page connects")
        browser.evaluate("document.getElementById('phone').click()")
        browser.wait_for("omniStats.events.some(e => e[1] === 'first_audio') && omniStats.played > 0", timeout,
                         "a spoken turn is detected and its answer plays")
        if screenshot is not None:
            browser.wait_for("omniStats.played > 12000", timeout, "half a second of the answer played")
            browser.screenshot(screenshot)
        if script.barge_onset is not None:
            browser.wait_for("omniStats.stops > 0 && omniStats.events.some(e => e[1] === 'answer_end')",
                             script.seconds + timeout, "the barge-in clip stops playback")
            before = browser.evaluate("omniStats.played")
            time.sleep(0.5)
            after = browser.evaluate("omniStats.played")
        else:
            browser.wait_for("omniStats.events.some(e => e[1] === 'answer_end')", timeout, "the answer ends")
            before = after = 0
        stats = browser.evaluate("JSON.stringify(omniStats)")
        texts = browser.evaluate("[...document.querySelectorAll('.omni')].map(e => e.textContent)")
    stats = json.loads(stats)
    end = wall(stats, script, script.question_end)
    events = {kind: t for t, kind in reversed(stats["events"])}  # first of each kind
    first = [t for t in stats["started"] if t > end]
    barge = None
    if script.barge_onset is not None and stats["stoppedAt"]:
        barge = stats["stoppedAt"][0] - wall(stats, script, script.barge_onset)
    return PageRun("speech_end" in events, stats["deltas"], texts[0] if texts else "", stats["framesReceived"],
                   stats["played"], stats["underruns"], stats["stops"], after - before,
                   first[0] - end if first else None,
                   events["speech_end"] - end if "speech_end" in events else None, barge)


# concurrent tabs without a browser: the page's protocol, its playback on a simulated clock
async def protocol_tab(url: str, question: np.ndarray, answers: int = 1) -> dict:
    import websockets

    origin = url.split("/?")[0].rstrip("/")
    ws_url = origin.replace("http://", "ws://") + "/ws"
    async with websockets.connect(ws_url, origin=origin, max_size=None) as ws:
        hello = json.loads(await ws.recv())
        if hello["type"] != "ready":
            return {"busy": True}
        rate = hello["sample_rate"]
        pcm = (np.concatenate([question, np.zeros(RATE, np.float32)]) * 32767).astype("<i2")
        arrivals: list[float] = []
        done = asyncio.Event()
        turn_end = {}

        async def speak():
            await ws.send(json.dumps({"type": "mic", "on": True}))
            t0 = time.monotonic()
            for i in range(0, len(pcm), 512):
                await ws.send(b"\x01" + pcm[i:i + 512].tobytes())
                await asyncio.sleep(max(0.0, t0 + (i + 512) / RATE - time.monotonic()))
            turn_end["t"] = t0 + speech_span(question)[1] / RATE
            while not done.is_set():  # silence keeps flowing, as from a microphone
                await ws.send(b"\x01" + bytes(1024))
                await asyncio.sleep(512 / RATE)

        async def report():
            while not done.is_set():
                if arrivals:
                    played = int(min(len(arrivals) * 1920, (time.monotonic() - arrivals[0]) * rate))
                    await ws.send(json.dumps({"type": "played", "epoch": 0, "samples": max(0, played)}))
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(speak()), asyncio.create_task(report())]
        try:
            async for m in ws:
                if isinstance(m, bytes):
                    arrivals.append(time.monotonic())
                elif json.loads(m).get("kind") == "answer_end":
                    break
        finally:
            done.set()
            for t in tasks:
                t.cancel()
    # playback from the first frame: frame k is due at start + k frames; late frames are underruns (and shift it)
    underruns, start = 0, arrivals[0] if arrivals else 0.0
    for k, t in enumerate(arrivals):
        due = start + k * 1920 / rate
        if t > due:
            underruns += 1
            start += t - due
    return {"busy": False, "frames": len(arrivals), "underruns": underruns,
            "first_audio_ms": 1000 * (arrivals[0] - turn_end["t"]) if arrivals else None}


async def tabs_at_once(url: str, questions: list[np.ndarray]) -> list[dict]:
    return await asyncio.gather(*(protocol_tab(url, q) for q in questions))


def machine_note() -> dict:
    from .machine import cpu_model
    return {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni_onnx.bench.web_live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"web-live-{time.strftime('%Y-%m-%d')}")
    p.add_argument("--questions", type=int, default=5, help="browser runs, one eval question each")
    p.add_argument("--max-tabs", type=int, default=4, help="concurrent tabs tried: 1..N")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--screenshot", type=Path, help="write a phone-size screenshot of the page here")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(args.bundle, ["--greedy", "--max-new-tokens", str(args.max_new_tokens),
                                           "--max-conversations", str(args.max_tabs)])
    result = {"bundle": str(args.bundle), **machine_note(), "browser": [], "tabs": {}}
    try:
        barge = load16k(BARGE)
        with tempfile.TemporaryDirectory() as tmp:
            for i, name in enumerate(QUESTIONS[:args.questions]):
                run = page_session(url, MicScript.build(load16k(name), barge), Path(tmp) / "mic.wav",
                                   args.screenshot if i == 0 else None)
                result["browser"].append({"question": name, **asdict(run)})
                print(json.dumps(result["browser"][-1]), flush=True)
        questions = [load16k(q) for q in QUESTIONS]
        for n in range(1, args.max_tabs + 1):
            runs = asyncio.run(tabs_at_once(url, [questions[k % len(questions)] for k in range(n)]))
            result["tabs"][n] = runs
            print(n, "tabs:", json.dumps(runs), flush=True)
    finally:
        proc.terminate()
        proc.wait()
    result["load_average_after"] = os.getloadavg()
    write_results(result, args.out)
    return 0


def write_results(result: dict, out: Path) -> None:
    med = lambda xs: statistics.median(xs) if xs else None
    load = lambda la: " / ".join(f"{x:.1f}" for x in la)
    b = result["browser"]
    lines = [f"# Web page live figures ({result['bundle']})", "",
             (f"Machine: {result['machine']}; load average (1/5/15 min) before {load(result['load_average'])}, "
              f"after {load(result['load_average_after'])} (a shared machine: indicative figures)."), "",
             ("| question | turn detected | deltas | frames | played s | underruns | end of speech -> end-of-turn "
              "event ms | end of speech -> first audio played ms | barge-in onset -> playback stopped ms |"),
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    for r in b:
        lines.append(f"| {r['question'][9:40]} | {r['turn_detected']} | {r['deltas']} | {r['frames_received']} | "
                     f"{r['samples_played'] / 24000:.1f} | {r['underruns']} | {fmt(r['turn_ms'])} | "
                     f"{fmt(r['first_audio_ms'])} | {fmt(r['barge_ms'])} |")
    first = med([r["first_audio_ms"] for r in b if r["first_audio_ms"] is not None])
    barge = med([r["barge_ms"] for r in b if r["barge_ms"] is not None])
    lines += ["", f"Median: end of speech -> first audio played {fmt(first)} ms, barge-in {fmt(barge)} ms.", "",
              "| tabs at once | underruns per tab | first audio ms per tab |", "|---|---|---|"]
    for n, runs in result["tabs"].items():
        lines.append(f"| {n} | {[r.get('underruns') for r in runs]} | "
                     f"{[fmt(r.get('first_audio_ms')) for r in runs]} |")
    lines += ["", ("Method: `omni-run --serve --greedy` as its own process; headless Chromium (fake microphone from a "
              "WAV paced in real time: 1 s silence, the question, 3.5 s pause, the barge-in clip) with the page's echo "
              "cancellation, noise suppression and gain control on. Times are on the page's clock: speech onsets "
              "and ends at -34 dBFS in the clips, located in the page's capture stream (+-16 ms), against the "
              "playback worklet's first played sample and its stop. The audio device's own output latency is not "
              "included (headless: no device). Concurrent tabs: WebSocket clients speaking the page's protocol "
              "(no browser), all asking at once; an underrun is a frame that arrives after its turn on a 24 kHz "
              "clock started by the first frame."), "",
              ("`omni-run --mic` on PulseAudio virtual devices (`shared/notes/live-audio-testing.md`, same machine "
              "type): end of speech -> first sound 1250 ms (tiny int8) / 1450 ms (full int8), barge-in 345-495 ms; "
              "both include ~160-200 ms of device buffering that the page's figures do not have.")]
    tmp = out / ".web_live.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, out / "web_live.json")
    tmp = out / ".web_live.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "web_live.md")


if __name__ == "__main__":
    sys.exit(main())
