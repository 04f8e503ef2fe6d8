"""`omni-run --mic` without sound hardware: the simulated backend feeds a real spoken question (padded with silence)
through the echo canceller and the real Silero VAD into a tiny random bundle, in simulated time. Checks: a turn is
detected and answered with audio, prepared at the pause so it plays as soon as the turn is confirmed; a pause the
user goes on after drops the prepared answer with nothing heard or kept; speech over the answer stops playback and
generation within 150 ms of its onset (simulated: the real-device figure is the live benchmark's); the assistant's
own voice leaking into the microphone does not interrupt it; Ctrl-C flushes --record. Latency is not measured
here: a simulated clock proves the logic only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from omni_onnx.audio_out import WavWriter
from omni_onnx.cli import main
from omni_onnx.errors import OmniError
from omni_onnx.generate import GenerationOptions
from omni_onnx.live import LiveOptions, LiveSession
from omni_onnx.live import cli as live_cli
from omni_onnx.live.echo import EchoGuardOptions, EchoOptions
from omni_onnx.live.sim import SimClock, SimMicrophone, SimSpeaker
from omni_onnx.live.vad import SileroVad
from omni_onnx.model import Conversation, OmniModel
from omni_onnx.speech import load_audio

CLIPS = Path(__file__).parent / "fixtures" / "eval_omni"
BUDGET = 0.150  # barge-in: speech onset -> playback and generation stopped (simulated time, no device buffers)
ECHO_BUDGET = 0.400  # the same over the answer's echo: the echo canceller's suppressor holds back double talk
GEN = GenerationOptions(max_new_tokens=80, greedy=True)


@pytest.fixture(scope="module")
def model(tiny_bundle) -> OmniModel:
    return OmniModel.load(tiny_bundle)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    names = {"question": "audio-en-05_why_is_the_sky_blue.mp3", "barge": "audio-en-13_what_is_quantum_mechanics.mp3",
             "voice": "audio-en-07_what_is_a_black_hole.mp3", "voice2": "audio-en-11_why_does_it_snow_in_winter.mp3"}
    return {k: load_audio(CLIPS / v) for k, v in names.items()}


class VoicedSpeaker(SimSpeaker):
    """Plays a real recorded voice in place of the tiny random model's noise, so its echo is speech to the VAD."""

    def __init__(self, clock: SimClock, voice16k: np.ndarray):
        super().__init__(clock)
        self.voice, self.pos = soxr.resample(voice16k, 16000, 24000).astype(np.float32), 0

    def write(self, pcm: np.ndarray) -> None:
        v = self.voice[self.pos:self.pos + len(pcm)]
        self.pos += len(pcm)
        super().write(np.pad(v, (0, len(pcm) - len(v))))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), np.float32)


def onset(clip: np.ndarray) -> float:
    """Seconds into the clip where speech starts: the first sample above -34 dBFS (independent of the VAD)."""
    return int(np.argmax(np.abs(clip) > 0.02)) / 16000


def session(model, mic_pcm, voice=None, echo_gain_db=None, opts=LiveOptions(), record=None):
    clock = SimClock()
    speaker = SimSpeaker(clock) if voice is None else VoicedSpeaker(clock, voice)
    mic = SimMicrophone(clock, mic_pcm, speaker, echo_gain_db=echo_gain_db, echo_delay=0.03, step_cost=0.02)
    s = LiveSession(Conversation(model), SileroVad.from_bundle(model.bundle), mic, speaker, clock, GEN, None,
                    opts, record)
    s.run()
    speaker.close()
    return s, speaker


def kinds(s: LiveSession) -> list[str]:
    return [e.kind for e in s.events]


def at(s: LiveSession, kind: str) -> list[float]:
    return [e.time for e in s.events if e.kind == kind]


def test_a_spoken_question_is_answered_as_soon_as_the_turn_is_confirmed(model, clips, tmp_path):
    q = clips["question"]
    pcm = np.concatenate([silence(1), q, silence(3)])
    record = WavWriter(tmp_path / "session.wav", 16000, channels=2)
    s, speaker = session(model, pcm, record=record)
    record.close()
    # the transcript comes after the first frames (late_transcript)
    assert kinds(s) == ["speech_start", "pause", "speech_end", "first_audio", "heard", "answer_end"]
    end_of_speech = 1 + len(q) / 16000
    # the turn ends after 256 ms of silence (+ the clip's own quiet tail and the VAD's release)
    assert 0.256 <= at(s, "speech_end")[0] - end_of_speech < 0.45
    # prepared from the pause on (32 ms), so the first frame is ready when the turn is confirmed
    assert at(s, "first_audio")[0] == at(s, "speech_end")[0]
    hist = s.conv.history
    assert [m.role for m in hist] == ["user", "assistant"] and hist[0].content == s.events[4].text != ""
    assert hist[1].content == s.events[5].text
    assert speaker.played_samples > 0 and speaker.played_samples % 1920 == 0
    assert np.abs(speaker.output).max() > 0
    rec, rate = sf.read(tmp_path / "session.wav", dtype="float32")
    assert rate == 16000 and rec.shape[1] == 2 and len(rec) >= len(pcm) // 512 * 512
    np.testing.assert_allclose(rec[:len(pcm) // 512 * 512, 0], pcm[:len(pcm) // 512 * 512], atol=1 / 32000)
    # the right channel is every sample that was played (the random voice overshoots full scale when resampled;
    # a WAV file clips it)
    played = np.clip(soxr.resample(speaker.output, 24000, 16000, quality="QQ"), -1, 1)
    n = min(len(played), len(rec)) - 500
    assert np.abs(rec[:n, 1] - played[:n]).max() < 1e-3 and np.abs(rec[:, 1]).max() > 0.1


def test_a_pause_the_user_goes_on_after_drops_the_prepared_answer_unheard(model, clips):
    q, q2 = clips["question"], clips["voice"]
    s, speaker = session(model, np.concatenate([silence(1), q, silence(0.1), q2, silence(3)]))
    k = kinds(s)
    assert k[:4] == ["speech_start", "pause", "resume", "pause"] and k.count("speech_end") == 1
    assert k.count("first_audio") == 1 and k.count("heard") == 1
    first = at(s, "first_audio")[0]
    assert first == at(s, "speech_end")[0] > 1 + (len(q) + len(q2)) / 16000 + 0.2
    assert not speaker.output[:int(first * 24000)].any()  # nothing of the dropped answer was played
    assert [m.role for m in s.conv.history] == ["user", "assistant"]  # nor kept


def test_speech_right_after_an_answer_began_continues_the_question(model, clips):
    """A 500 ms pause is taken for the end of the turn; the user goes on 180 ms into the answer: the answer stops,
    is dropped, and both parts of the question make one turn. (Headphones: in a first answer with the canceller on,
    its suppressor delays the barge-in until the echo estimator has found there is no echo.)"""
    q, q2 = clips["question"], clips["voice"]
    s, speaker = session(model, np.concatenate([silence(1), q, silence(0.5), q2, silence(3)]),
                         opts=LiveOptions(echo=EchoOptions.named("off")))
    k = kinds(s)
    assert k.count("speech_end") == 2 and k.count("interrupt") == 1 and k.count("rejoin") == 1
    assert k.index("rejoin") < k.index("speech_end", k.index("interrupt"))
    assert "answer_end" not in k[:k.index("rejoin")]
    assert [m.role for m in s.conv.history] == ["user", "assistant"]  # one question, one answer
    heard = [e.text for e in s.events if e.kind == "heard"]
    assert s.conv.history[0].content == heard[-1] and len(heard) == 2


def barge_in_input(clips, gap: float = 3.0):
    q, b = clips["question"], clips["barge"]
    start = 1 + len(q) / 16000 + gap
    return np.concatenate([silence(1), q, silence(gap), b, silence(3)]), start + onset(b)


@pytest.mark.parametrize("echo_gain_db,budget", [(None, BUDGET), (-10.0, ECHO_BUDGET)],
                         ids=["headphones", "speakers-10dB"])
def test_speech_over_the_answer_stops_it(model, clips, echo_gain_db, budget):
    pcm, speech_onset = barge_in_input(clips)
    s, speaker = session(model, pcm, voice=np.concatenate([clips["voice"], clips["voice2"]]),
                         echo_gain_db=echo_gain_db)
    first = at(s, "first_audio")[0]
    assert first < speech_onset < first + 3  # the injected speech lands while the answer plays
    assert kinds(s).count("interrupt") == 1 and kinds(s).count("speech_end") == 2  # the interruption is the next turn
    stopped = at(s, "playback_stopped")[0]
    assert 0 < stopped - speech_onset <= budget
    # nothing was played between the stop and the next answer
    nxt = at(s, "first_audio")[1]
    out = speaker.output
    assert not out[round(stopped * 24000):int(nxt * 24000)].any()
    # generation stopped: the interrupted answer is shorter than the same answer uninterrupted
    full, _ = session(model, np.concatenate([silence(1), clips["question"], silence(8)]))
    full_answer = full.conv.history[1].content
    heard = s.conv.history[1].content
    assert full_answer.startswith(heard) and len(heard) < len(full_answer)
    assert [m.role for m in s.conv.history] == ["user", "assistant"] * 2


@pytest.mark.parametrize("echo_gain_db", [-10.0, -6.0, 0.0])
def test_the_assistant_does_not_hear_itself(model, clips, echo_gain_db):
    pcm = np.concatenate([silence(1), clips["question"], silence(8)])
    voice = np.concatenate([clips["voice"], clips["voice2"]])
    s, _ = session(model, pcm, voice=voice, echo_gain_db=echo_gain_db)
    assert "interrupt" not in kinds(s) and kinds(s).count("speech_end") == 1
    # the same echo without the canceller: the assistant interrupts itself (so the echo is a real test)
    s, _ = session(model, pcm, voice=voice, echo_gain_db=echo_gain_db, opts=LiveOptions(echo=EchoOptions.named("off")))
    assert "interrupt" in kinds(s)


def test_half_duplex_ignores_the_microphone_while_speaking(model, clips):
    pcm, _ = barge_in_input(clips, gap=2.0)
    s, _ = session(model, pcm, voice=clips["voice"], echo_gain_db=0.0,
                   opts=LiveOptions(echo=EchoOptions.named("off"), half_duplex=True))
    assert "interrupt" not in kinds(s) and kinds(s).count("speech_end") == 1


def test_ctrl_c_cuts_audio_and_flushes_the_record(tiny_bundle, clips, tmp_path, monkeypatch, capsys):
    made = {}

    class CtrlCMicrophone(SimMicrophone):
        """Ctrl-C at 4.5 s of simulated time: the question has ended and the answer is being generated."""

        def read(self):
            return self._ctrl_c() or super().read()

        def poll(self):
            return self._ctrl_c() or super().poll()

        def _ctrl_c(self):
            if self.clock.now >= 4.5:
                made["busy"] = made["speaker"].busy
                raise KeyboardInterrupt

    def open_sim(args, sample_rate):
        clock = SimClock()
        made["speaker"] = speaker = SimSpeaker(clock, sample_rate)
        pcm = np.concatenate([silence(1), clips["question"], silence(10)])
        made["mic"] = mic = CtrlCMicrophone(clock, pcm, speaker, step_cost=0.02)
        return mic, speaker, clock

    monkeypatch.setattr(live_cli, "open_devices", open_sim)
    path = tmp_path / "session.wav"
    assert main(["--bundle", str(tiny_bundle), "--mic", "--record", str(path), "--greedy",
                 "--max-new-tokens", "80"]) == 130
    assert "[interrupted]" in capsys.readouterr().err
    assert made["busy"] and not made["speaker"].busy  # it was speaking, and was cut
    info = sf.info(path)  # every block read before Ctrl-C is in the file, which is a complete WAV
    assert (info.samplerate, info.channels) == (16000, 2) and info.frames >= made["mic"]._next * 512 > 4 * 16000


def test_options_from_the_command_line():
    from omni_onnx.cli import build_parser
    args = build_parser().parse_args(["--mic", "--min-silence-ms", "500", "--barge-in-ms", "96", "--pause-ms", "64",
                                      "--vad-threshold", "0.6", "--input-device", "2", "--echo", "off"])
    opts = live_cli.live_options(args)
    assert (opts.turns.min_silence, opts.turns.barge_in_speech, opts.turns.threshold) == (8000, 1536, 0.6)
    assert opts.turns.pause == 1024 and opts.echo == EchoOptions(cancel=False, guard=None) and args.input_device == 2
    default = live_cli.live_options(build_parser().parse_args(["--mic"]))
    assert default.echo == EchoOptions(cancel=True, guard=EchoGuardOptions()) and default.turns.min_silence == 4096
    assert build_parser().parse_args(["--input-device", "micsink.monitor"]).input_device == "micsink.monitor"
    with pytest.raises(OmniError, match="--pause-ms"):
        live_cli.live_options(build_parser().parse_args(["--mic", "--pause-ms", "900"]))
