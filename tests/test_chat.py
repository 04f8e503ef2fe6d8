"""omni-run's chat: driven through stdin in a subprocess as a user types (commands, attachments checked when attached,
unknown commands refused, /reset), and Ctrl-C at unit level with a real SIGINT sent mid-answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omni_onnx.chat import Chat
from omni_onnx.cli import build_parser, run_turn
from omni_onnx.dump import CodeDump
from omni_onnx.generate import GenerationOptions
from omni_onnx.mimi import STEADY_FRAMES_PER_CALL
from omni_onnx.model import Conversation, OmniModel


def test_chat_through_stdin(tiny_bundle, tmp_path):
    from omni_onnx.export.reference import chat_prompt_ids
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "empty.mp3").write_bytes(b"")
    typed = ["/help", "/frobnicate", "/image", f"/image {tmp_path}/nope.png", f"/image {tmp_path}/ok.png",
             f"/audio {tmp_path}/empty.mp3", "What is in it?", "/reset", "Hello"]
    r = subprocess.run([sys.executable, "-m", "omni_onnx", "--bundle", str(tiny_bundle), "--greedy",
                        "--max-new-tokens", "6", "--dump-codes", str(tmp_path / "last.json")],
                       input="\n".join(typed) + "\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out, err = r.stdout, [line for line in r.stderr.splitlines() if ": error: " in line]
    assert out.startswith("omni-run chat:") and "/image PATH" in out and "/reset" in out  # banner
    assert "commands:" in out  # /help
    assert out.count("omni> ") == 2  # only the two questions reached the model
    assert f"[attached {tmp_path}/ok.png to the next question]" in out
    assert "[conversation cleared" in out
    assert [line.split(": error: ")[1][:40] for line in err] == [
        "unknown command /frobnicate; /help lists",
        "/image needs a file: /image PATH",
        f"image {tmp_path}/nope.png does not exist; pass a"[:40],
        f"audio file {tmp_path}/empty.mp3 is empty (0 bytes)"[:40]]
    assert "Traceback" not in r.stderr
    # after /reset the last question is asked as the first of a new conversation
    assert CodeDump.read(tmp_path / "last.json").prompt_ids == chat_prompt_ids([{"role": "user", "content": "Hello"}])


class InterruptingPlayer:
    """Sends this process `presses` SIGINTs (Ctrl-C) when the second chunk of audio arrives: a user stopping the
    answer."""

    def __init__(self, presses: int):
        self.presses, self.frames = presses, 0

    def write(self, pcm: np.ndarray) -> None:
        self.frames += 1
        if self.frames == 2:
            for _ in range(self.presses):
                os.kill(os.getpid(), signal.SIGINT)

    def close(self) -> None:
        pass


def make_chat(tiny_bundle, tmp_path, player, questions):
    args = build_parser().parse_args(["--bundle", str(tiny_bundle), "--greedy"])
    answer = partial(run_turn, args=args, opts=GenerationOptions(max_new_tokens=40, greedy=True), rng=None,
                     player=player)
    lines = iter(questions)

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    return Chat(partial(Conversation, OmniModel.load(tiny_bundle)), answer, tmp_path / "turn.wav", [], None, read)


def test_ctrl_c_stops_the_answer_only(tiny_bundle, tmp_path, capsys):
    chat = make_chat(tiny_bundle, tmp_path, InterruptingPlayer(presses=1), ["Hello", "Tell me more."])
    handler = signal.getsignal(signal.SIGINT)
    chat.run()
    out, err = capsys.readouterr()
    assert "[stopped: you stopped it]" in err and out.count("omni> ") == 2  # the chat went on to the next question
    # the stopped answer's audio, a complete file: the first frame alone, then one Mimi call of several frames
    assert sf.info(tmp_path / "turn-1.wav").frames == (1 + STEADY_FRAMES_PER_CALL) * 1920
    assert sf.info(tmp_path / "turn-2.wav").frames > (1 + STEADY_FRAMES_PER_CALL) * 1920
    assert [m.role for m in chat.conv.history] == ["user", "assistant"] * 2  # the stopped answer is history
    assert signal.getsignal(signal.SIGINT) is handler  # restored after each answer


def test_second_ctrl_c_quits(tiny_bundle, tmp_path):
    chat = make_chat(tiny_bundle, tmp_path, InterruptingPlayer(presses=2), ["Hello", "Tell me more."])
    with pytest.raises(KeyboardInterrupt):
        chat.run()
    assert not (tmp_path / "turn-1.wav").exists() and list(tmp_path.iterdir()) == []
