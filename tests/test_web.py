"""`omni-run --serve` without a browser: the doors (loopback bind, Host, Origin, token, busy), upload limits, bad
frames and dropped sockets (each ends its own connection only, nothing left behind), the page speaker's
played-position bookkeeping, and a typed question streamed over the socket against the CLI's own answer."""

from __future__ import annotations

import http.client
import json
import struct
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from omni_onnx.cli import main
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import Conversation, OmniModel, TextDelta
from omni_onnx.web.adapters import PageSpeaker
from omni_onnx.web.cli import make_server
from omni_onnx.web.protocol import CLIP, IMAGE, Limits
from omni_onnx.web.server import ServeOptions
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

GEN = GenerationOptions(max_new_tokens=40, greedy=True)
CLIPS = Path(__file__).parent / "fixtures" / "eval_omni"


@pytest.fixture(scope="module")
def model(tiny_bundle) -> OmniModel:
    return OmniModel.load(tiny_bundle)


@contextmanager
def serving(model, gen=GEN, **kw):
    """An in-process server on a free loopback port; yields (port, app state)."""
    opts = ServeOptions(gen, **kw)
    server, sock = make_server(model, opts, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], server.config.app.state.conversations
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def tab(port, origin=None, query=""):
    """A connected tab: (socket, the server's first message)."""
    with connect(f"ws://127.0.0.1:{port}/ws{query}", origin=origin or f"http://127.0.0.1:{port}", max_size=None,
                 open_timeout=10) as ws:
        yield ws, json.loads(ws.recv(timeout=10))


def until(ws, kind: str, timeout: float = 60.0) -> list:
    """Messages up to and including the first of type or event `kind` (audio frames as bytes)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        m = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        got.append(m if isinstance(m, bytes) else json.loads(m))
        if isinstance(got[-1], dict) and kind in (got[-1].get("type"), got[-1].get("kind")):
            return got


def ask(ws, text: str) -> list:
    ws.send(json.dumps({"type": "text", "text": text}))
    return until(ws, "end")


def upload(tag: int, name: str, data: bytes, **header) -> bytes:
    head = json.dumps({"name": name, **header}).encode()
    return bytes([tag]) + struct.pack(">H", len(head)) + head + data


def open_count(state, want: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while state["open"] != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return state["open"]


def test_non_loopback_bind_is_refused_without_the_flag(capsys, tmp_path):
    assert main(["--bundle", str(tmp_path), "--serve", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "--allow-remote" in err and "Traceback" not in err


def test_remote_serving_requires_a_token():
    from omni_onnx.cli import build_parser
    from omni_onnx.web.cli import serve_options
    opts = serve_options(build_parser().parse_args(["--serve", "--host", "0.0.0.0", "--allow-remote"]), GEN)
    assert opts.allow_remote and opts.token and len(opts.token) >= 16
    assert serve_options(build_parser().parse_args(["--serve"]), GEN).token is None


def test_a_typed_question_streams_the_clis_answer(model):
    reference = ask_once(model, "Why is the sky blue?")
    with serving(model) as (port, _), tab(port) as (ws, hello):
        assert hello["type"] == "ready" and hello["live"] and hello["sample_rate"] == 24000
        got = ask(ws, "Why is the sky blue?")
        deltas = [m["text"] for m in got if isinstance(m, dict) and m["type"] == "delta"]
        frames = [m for m in got if isinstance(m, bytes)]
        assert len(deltas) > 1 and "".join(deltas) == reference == got[-1]["text"]
        assert frames and all(f[0] == 1 and len(f) == 1 + 2 * 1920 for f in frames)
        ws.send(json.dumps({"type": "text", "text": "/reset"}))
        assert until(ws, "reset")[-1]["message"] == "conversation reset"


def test_wrong_origin_wrong_host_and_missing_token_are_refused(model):
    with serving(model) as (port, state):
        with pytest.raises(InvalidStatus) as e, tab(port, origin="http://evil.example"):
            pass
        assert e.value.response.status_code == 403
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/", headers={"Host": f"evil.example:{port}"})  # DNS rebinding
        assert conn.getresponse().status == 403
        assert open_count(state, 0) == 0
    with serving(model, token="s3cret-token-1") as (port, _):
        with pytest.raises(InvalidStatus), tab(port):
            pass
        with tab(port, query="?token=s3cret-token-1") as (_, hello):
            assert hello["type"] == "ready"


def test_beyond_the_limit_a_tab_is_told_the_server_is_busy(model):
    with serving(model, max_conversations=1) as (port, state):
        with tab(port), tab(port) as (second, busy):
            assert busy["type"] == "busy" and "--max-conversations" in busy["message"]
            with pytest.raises(ConnectionClosed):
                second.recv(timeout=10)
        assert open_count(state, 0) == 0
        with tab(port) as (_, hello):
            assert hello["type"] == "ready"


def test_uploads_are_checked_for_size_and_type(model):
    limits = Limits(image_bytes=1000, clip_bytes=1000)
    with serving(model, limits=limits) as (port, _), tab(port) as (ws, _):
        ws.send(upload(IMAGE, "big.png", b"\x89PNG" + bytes(2000)))
        assert "limit is" in until(ws, "error")[-1]["message"]
        ws.send(upload(IMAGE, "x.png", b"#!/bin/sh\n"))
        assert "not a JPEG, PNG" in until(ws, "error")[-1]["message"]
        ws.send(upload(CLIP, "a.wav", b"RIFF\0\0\0\0WAVE" + bytes(100), voice="mine"))
        assert "cannot clone voices" in until(ws, "error")[-1]["message"]  # omni-voices' message: no cloning graphs
        assert ask(ws, "Hi")[-1]["type"] == "end"  # refused uploads leave the connection working
        ws.send(b"\x02" + bytes(limits.message_bytes + 10))  # beyond the socket's own limit: this tab ends
        with pytest.raises(ConnectionClosed):
            until(ws, "never")


GARBAGE = [b"\x7fjunk", b"\x01abc", b"", "not json", "[]", json.dumps({"type": "launch"}),
           json.dumps({"type": "played", "epoch": "x", "samples": 1}), json.dumps({"type": "mic", "on": "yes"})]


def test_garbage_ends_that_tab_only(model):
    with serving(model) as (port, state), tab(port) as (good, _):
        for garbage in GARBAGE:
            with tab(port) as (bad, _):
                bad.send(garbage)
                msgs = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        msgs.append(json.loads(bad.recv(timeout=10)))
                assert msgs and msgs[-1]["type"] == "error", garbage
                assert msgs[-1]["message"].startswith("connection ended")
            assert open_count(state, 1) == 1
        assert ask(good, "Hi")[-1]["type"] == "end"


def test_a_socket_dropped_mid_answer_leaves_nothing_behind(model, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with serving(model) as (port, state):
        with tab(port) as (other, _):
            with tab(port) as (gone, _):
                gone.send(upload(IMAGE, "x.png", _png()))
                until(gone, "attached")
                assert len(list(tmp_path.glob("omni-web-*/*"))) == 1
                gone.send(json.dumps({"type": "text", "text": "Why is the sky blue?"}))
                while not isinstance(gone.recv(timeout=30), bytes):  # mid-answer: audio is flowing
                    pass
                gone.socket.close()  # abrupt: no closing handshake
                assert open_count(state, 1) == 1  # its conversation thread ended and was joined
                assert not list(tmp_path.glob("omni-web-*/*"))  # its upload is gone
                assert len(list(tmp_path.glob("omni-web-*"))) == 1  # with its folder; the other tab's stays
            assert ask(other, "Hi")[-1]["type"] == "end"
        assert open_count(state, 0) == 0


def _png() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_the_page_speaker_counts_what_the_page_played():
    sent, stops = [], []
    spk = PageSpeaker(24000, sent.append, lambda: stops.append(1))
    spk.write(np.full(1920, 0.5, np.float32))
    spk.write(np.full(1920, 0.25, np.float32))
    assert spk.busy and spk.played_samples == 0 and len(sent) == 2
    spk.played(0, 2000)
    assert spk.played_samples == 2000 and spk.busy
    assert np.array_equal(spk.take_played(), np.r_[np.full(1920, 0.5), np.full(80, 0.25)].astype(np.float32))
    spk.stop()  # barge-in: the page drops its queue and starts epoch 1
    assert stops and not spk.busy and spk.played_samples == 2000
    spk.played(0, 2400)  # a report the page sent just before it stopped still counts
    assert spk.played_samples == 2400
    spk.played(0, 9999)  # never more than was written in that epoch
    assert spk.played_samples == 3840
    spk.write(np.zeros(1920, np.float32))
    spk.played(1, 1000)
    assert spk.busy and spk.played_samples == 4840 and len(spk.take_played()) == 1000


def test_push_to_talk_drives_the_same_live_engine_as_the_mic(model):
    """A question sent between mic on and mic off is heard and answered exactly as `omni-run --mic`'s engine hears
    and answers that audio followed by the end-of-turn silence (releasing the button stands for that silence)."""
    from omni_onnx.live.sim import SimClock, SimMicrophone, SimSpeaker
    from omni_onnx.live import LiveSession
    from omni_onnx.speech import load_audio
    from omni_onnx.live.vad import SileroVad
    from omni_onnx.web.adapters import LIVE_OPTIONS, PageMicrophone

    question = load_audio(CLIPS / "audio-en-05_why_is_the_sky_blue.mp3")
    pcm = (question[:len(question) // 512 * 512] * 32768).clip(-32768, 32767).astype("<i2")
    question = pcm.astype(np.float32) / 32768  # as the page sends it: int16
    clock = SimClock()
    speaker = SimSpeaker(clock)
    silence = np.zeros(PageMicrophone().silence_on_release, np.float32)
    mic = SimMicrophone(clock, np.concatenate([question, silence]), speaker)
    cli = LiveSession(Conversation(model), SileroVad.from_bundle(model.bundle), mic, speaker, clock, GEN, None,
                      LIVE_OPTIONS)
    cli.run()
    heard = [e.text for e in cli.events if e.kind == "heard"]
    answered = [e.text for e in cli.events if e.kind == "answer_end"]
    assert len(heard) == len(answered) == 1
    with serving(model) as (port, _), tab(port) as (ws, _):
        ws.send(json.dumps({"type": "mic", "on": True}))
        for i in range(0, len(pcm), 512):
            ws.send(b"\x01" + pcm[i:i + 512].tobytes())
        ws.send(json.dumps({"type": "mic", "on": False}))
        got = [m for m in until(ws, "end") if isinstance(m, dict)]
    assert [m["text"] for m in got if m["type"] == "heard"] == heard
    assert got[-1]["text"] == answered[0] and "".join(m["text"] for m in got if m["type"] == "delta") == answered[0]


def test_a_clip_uploaded_on_the_page_is_cloned_as_omni_voices_clones_it(tiny_clone_bundle, tmp_path, monkeypatch):
    from omni_onnx.voices_cli import main as voices_main
    monkeypatch.setenv("OMNI_ONNX_DATA", str(tmp_path / "cli"))
    clip = CLIPS / "audio-en-04_please_introduce_spring_in_one_sentence.mp3"  # long enough to clone
    assert voices_main(["add", "mine", str(clip), "--bundle", str(tiny_clone_bundle)]) == 0
    monkeypatch.setenv("OMNI_ONNX_DATA", str(tmp_path / "web"))
    with serving(OmniModel.load(tiny_clone_bundle)) as (port, _), tab(port) as (ws, hello):
        assert hello["cloning"] and not hello["live"]  # this bundle has no speech input: text chat and cloning
        ws.send(upload(CLIP, clip.name, b"RIFF\0\0\0\0WAVE", voice="default"))
        assert "reserved" in until(ws, "error")[-1]["message"]  # omni-voices' name rules
        ws.send(upload(CLIP, clip.name, clip.read_bytes(), voice="mine"))
        done = until(ws, "voices", timeout=120)[-1]
        assert "mine" in done["voices"] and "voice 'mine' added" in done["message"]
    cli, web = (np.load(tmp_path / side / "voices" / "mine.npz") for side in ("cli", "web"))
    with cli, web:
        assert np.array_equal(cli["ref_codes"], web["ref_codes"]) and np.array_equal(cli["spk_emb"], web["spk_emb"])


def test_the_stop_button_cuts_a_typed_answer(model):
    long = GenerationOptions(max_new_tokens=400, greedy=True)  # still generating when Stop arrives
    full = ask_once(model, "Why is the sky blue?", long)
    with serving(model, long) as (port, _), tab(port) as (ws, _):
        ws.send(json.dumps({"type": "text", "text": "Why is the sky blue?"}))
        while not isinstance(ws.recv(timeout=30), bytes):  # the answer is playing
            pass
        ws.send(json.dumps({"type": "stop"}))
        got = [m for m in until(ws, "answer_end") if isinstance(m, dict)]
        ws.send(json.dumps({"type": "text", "text": "/reset"}))
        after = [m for m in until(ws, "reset") if isinstance(m, dict)]
    kinds = [m.get("kind", m["type"]) for m in got]
    assert "stop" in kinds and kinds.index("stop") < kinds.index("interrupt") < kinds.index("answer_end")
    assert full.startswith(got[-1]["text"]) and len(got[-1]["text"]) < len(full)  # history: the answer as cut
    assert [m["type"] for m in after] == ["reset"]  # stopped once: nothing else came after


def ask_once(model, text: str, gen: GenerationOptions = GEN) -> str:
    return "".join(e.text for e in Conversation(model).respond(text, gen) if isinstance(e, TextDelta))
