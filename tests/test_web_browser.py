"""The page in a real browser: `omni-run --serve` (its own process, the real CLI) and headless Chromium whose fake
microphone plays an eval question, a pause and a barge-in clip in real time. The page connects, the turn is
detected by the live engine, the answer's text streams into the page, its audio is played (the page's playback
worklet counts it) and the barge-in clip stops playback. A missing Chromium fails with the line that installs it."""

from __future__ import annotations

from omni_onnx.bench.cdp import chromium_path
from omni_onnx.bench.web_live import BARGE, MicScript, load16k, page_session, start_server


def test_a_spoken_turn_and_a_barge_in_in_chromium(tiny_bundle, tmp_path):
    chromium_path()
    proc, url = start_server(tiny_bundle, ["--greedy", "--max-new-tokens", "120"])
    try:
        script = MicScript.build(load16k("audio-en-05_why_is_the_sky_blue.mp3"), load16k(BARGE))
        run = page_session(url, script, tmp_path / "mic.wav")
    finally:
        proc.terminate()
        proc.wait()
    assert run.turn_detected and run.turn_ms is not None and run.turn_ms > 0
    assert run.deltas > 1  # text arrived piece by piece, before the answer ended (the tiny model writes newlines)
    assert run.frames_received > 0 and run.samples_played >= 1920  # played by the page's worklet, not just received
    assert run.samples_played < run.frames_received * 1920  # the barge-in dropped queued audio
    assert run.stops == 1 and run.played_after_stop == 0
    assert run.barge_ms is not None and 0 < run.barge_ms < 1000
    assert run.underruns == 0
