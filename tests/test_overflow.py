"""The context-overflow policy (docs/step-protocol.md, "Context overflow"): stop the turn with a message.

With a context of C positions and a prompt of L < C tokens, a turn runs at most C - L + 1 steps (the prefill fills
L positions, each later step feeds one, and the last step's token is sampled but never fed); up to that point the
answer is exactly what an unlimited context gives. The turn then ends with TurnEnd reason "context" (omni-run:
"[stopped: context full]", exit 0), the partial reply enters the history, and a prompt that does not fit
(L >= C) is refused before any graph runs."""

from __future__ import annotations

import pytest

from omni_onnx.cli import main as omni_run
from omni_onnx.dump import CodeDump
from omni_onnx.errors import OmniError
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import Conversation, OmniModel, TurnEnd

QUESTION = "Why is the sky blue?"
PROMPT_LEN = 23  # the chat prompt of QUESTION
FULL_MESSAGE = "the prompt is {} tokens but the context holds {}; start a new conversation or raise --context"


@pytest.mark.parametrize("context", [PROMPT_LEN + 1, 30])
def test_turn_stops_at_the_context_with_the_reference_prefix(tiny_lively_bundle, tiny_lively_checkpoint, context):
    from omni_onnx.export.checkpoint import load_model
    from omni_onnx.export.reference import reference_generate
    record = CodeDump([])
    events = list(Conversation(OmniModel.load(tiny_lively_bundle), context=context).respond(
        QUESTION, GenerationOptions(max_new_tokens=100, greedy=True), decode_audio=False, record=record))
    steps = context - PROMPT_LEN + 1
    assert isinstance(events[-1], TurnEnd) and events[-1].reason == "context"
    assert len(record.prompt_ids) == PROMPT_LEN and len(record.text_ids) == steps
    ref = reference_generate(load_model(tiny_lively_checkpoint), record.prompt_ids, steps, greedy=True)
    assert (record.text_ids, record.audio_codes, record.frames) == (ref.text_ids, ref.audio_codes, ref.frames)


def test_cli_reports_context_full_and_keeps_the_dump(tiny_lively_bundle, tmp_path, capsys):
    dump = tmp_path / "d.json"
    assert omni_run(["--bundle", str(tiny_lively_bundle), "--text", QUESTION, "--greedy", "--max-new-tokens", "100",
                     "--context", "30", "--dump-codes", str(dump)]) == 0
    assert capsys.readouterr().err.strip() == "[stopped: context full]"
    got = CodeDump.read(dump)
    assert len(got.text_ids) == 30 - PROMPT_LEN + 1 and all(len(r) == len(got.text_ids) for r in got.audio_codes)


def test_prompt_that_fills_the_context_is_refused(tiny_lively_bundle, capsys):
    assert omni_run(["--bundle", str(tiny_lively_bundle), "--text", QUESTION, "--greedy",
                     "--context", str(PROMPT_LEN)]) == 1
    assert capsys.readouterr().err.strip() == "omni-run: error: " + FULL_MESSAGE.format(PROMPT_LEN, PROMPT_LEN)


def test_next_turn_after_a_full_context_is_refused_with_the_same_message(tiny_lively_bundle):
    conv = Conversation(OmniModel.load(tiny_lively_bundle), context=40)
    opts = GenerationOptions(max_new_tokens=100, greedy=True)
    end = list(conv.respond(QUESTION, opts, decode_audio=False))[-1]
    assert end.reason == "context" and conv.history[-1].content == end.text  # the partial reply is history
    assert conv.state.length == 40
    with pytest.raises(OmniError, match=r"the prompt is \d+ tokens but the context holds 40; start a new "
                                        r"conversation or raise --context"):
        list(conv.respond("Tell me more.", opts, decode_audio=False))


def test_a_live_conversation_forgets_its_oldest_exchanges_to_keep_room(tiny_lively_bundle):
    """`forget_oldest(room)` keeps the longest suffix of exchanges (and the system message) whose prompt leaves
    `room` positions free: checked against prompts built with one more and one fewer exchange."""
    from omni_onnx.prompt import Message
    conv = Conversation(OmniModel.load(tiny_lively_bundle), context=120)
    exchanges = [[Message("user", f"question {i} about the sky"), Message("assistant", f"answer {i} " + "blue " * i)]
                 for i in range(8)]
    system = Message("system", "You are a helpful assistant.")
    conv.history = [system] + [m for pair in exchanges for m in pair]
    room = 40
    assert len(conv.prompt_ids("")) + room > conv.context  # too long as it is
    dropped = conv.forget_oldest(room)
    kept = (len(conv.history) - 1) // 2
    assert dropped == 2 * (8 - kept) and conv.history[0] == system
    assert conv.history[1:] == [m for pair in exchanges[8 - kept:] for m in pair]
    assert len(conv.prompt_ids("")) + room <= conv.context
    conv.history = [system] + [m for pair in exchanges[8 - kept - 1:] for m in pair]  # one exchange more
    assert len(conv.prompt_ids("")) + room > conv.context
