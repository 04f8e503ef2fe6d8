"""What the live engine asks of `Conversation` to answer fast: the history prefilled while idle (the next turn then
equals upstream's fresh prefill, checked against the torch reference), the transcript made after the first frames
(the same transcript, text and audio, in an order a display can follow), and a prepared answer withdrawn without a
trace in the history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import chat_prompt_ids, reference_generate
from omni_onnx.export.voices import RELEASED_VOICES
from omni_onnx.generate import GenerationOptions
from omni_onnx.inject import AUDIO_PAD
from omni_onnx.model import LATE_TRANSCRIPT_FRAMES, AudioChunk, Conversation, OmniModel, TextDelta, Transcript, withdraw
from omni_onnx.speech import load_audio
from omni_onnx.voices import Voice

QUESTION = Path(__file__).parent / "fixtures" / "eval_omni" / "audio-en-05_why_is_the_sky_blue.mp3"
GREEDY = GenerationOptions(max_new_tokens=20, greedy=True)


@pytest.fixture(scope="module")
def lively(tiny_lively_bundle, tiny_lively_checkpoint):
    """The lively bundle and its torch reference."""
    from omni_onnx.export.checkpoint import load_model
    return OmniModel.load(tiny_lively_bundle), load_model(tiny_lively_checkpoint)


def test_history_prefilled_while_idle_then_the_turn_equals_a_fresh_prefill(lively):
    model, torch_model = lively
    conv = Conversation(model, context=512)
    list(conv.respond("Hello", GREEDY, decode_audio=False))
    computed = conv.prefill_history()
    history = [{"role": m.role, "content": m.content} for m in conv.history]
    spoken = chat_prompt_ids(history + [{"role": "user", "content": AUDIO_PAD}])
    head = spoken[:spoken.index(conv.model.config.audio_token_id)]  # up to where a spoken question's speech goes
    # the first turn's user message is cached already: what is computed starts there and ends at the new user turn
    assert conv.state.length == len(head) and 0 < computed < len(head)
    second = CodeDump([])
    list(conv.respond("Tell me more.", GREEDY, decode_audio=False, record=second))
    assert conv.state.reused == len(head)  # the question's prefill began right after the prefilled head
    ref = reference_generate(torch_model, chat_prompt_ids(history + [{"role": "user", "content": "Tell me more."}]),
                             20, greedy=True)
    assert (second.prompt_ids, second.text_ids, second.audio_codes) == (ref.prompt_ids, ref.text_ids, ref.audio_codes)


def test_under_a_voice_the_thinker_alone_is_prefilled_and_the_turn_equals_the_reference(lively):
    """A voice's reference codes sit under the end of the prompt, so the Talker cannot be prefilled before the
    question; the Thinker can, and the Talker then catches up from the Thinker's cached bridge rows."""
    model, torch_model = lively
    conv = Conversation(model, voice="dylan", context=512)
    list(conv.respond("Hello", GREEDY, decode_audio=False))
    assert conv.prefill_history() > 0
    history = [{"role": m.role, "content": m.content} for m in conv.history]
    spoken = chat_prompt_ids(history + [{"role": "user", "content": AUDIO_PAD}])
    head = spoken.index(conv.model.config.audio_token_id)
    assert conv.state.length == head > conv.state.talker.length
    second = CodeDump([])
    list(conv.respond("Tell me more.", GREEDY, decode_audio=False, record=second))
    assert conv.state.reused == head
    voice = Voice.load(RELEASED_VOICES / "dylan.npz")
    ref = reference_generate(torch_model, chat_prompt_ids(history + [{"role": "user", "content": "Tell me more."}]),
                             20, greedy=True, ref_codes=voice.ref_codes, spk_emb=voice.spk_emb)
    assert (second.prompt_ids, second.text_ids, second.audio_codes) == (ref.prompt_ids, ref.text_ids, ref.audio_codes)


def test_late_transcript_comes_after_the_first_frames_with_the_same_content(tiny_bundle):
    model = OmniModel.load(tiny_bundle)
    wav = load_audio(QUESTION)
    early = list(Conversation(model).respond(None, GREEDY, audio=wav))
    late = list(Conversation(model).respond(None, GREEDY, audio=wav, late_transcript=True))
    kinds = [type(e) for e in late]
    at = kinds.index(Transcript)
    assert kinds[:at] == [AudioChunk] * LATE_TRANSCRIPT_FRAMES and TextDelta not in kinds[:at]
    assert isinstance(early[0], Transcript) and early[0] == late[at] and early[0].text
    text = lambda evs: "".join(e.text for e in evs if isinstance(e, TextDelta))
    audio = lambda evs: np.concatenate([e.pcm for e in evs if isinstance(e, AudioChunk)])
    assert text(late) == text(early) != "" and np.array_equal(audio(late), audio(early))
    assert late[-1] == early[-1]  # the same TurnEnd


def test_a_withdrawn_answer_leaves_the_history_and_makes_no_transcript(tiny_bundle, monkeypatch):
    model = OmniModel.load(tiny_bundle)
    conv = Conversation(model)
    list(conv.respond("Hello", GREEDY, decode_audio=False))
    before = list(conv.history)
    answer = conv.respond(None, GREEDY, audio=load_audio(QUESTION), late_transcript=True)
    assert isinstance(next(answer), AudioChunk)
    monkeypatch.setattr(model.speech, "transcribe", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    withdraw(answer)
    assert conv.history == before
    withdraw(conv.respond(None, GREEDY, audio=load_audio(QUESTION), late_transcript=True))  # never started
    assert conv.history == before
