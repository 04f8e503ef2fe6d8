"""Every spoken question and image of upstream's eval set, through the runtime (numpy + onnxruntime) and through
the torch reference (transformers' SigLIP processor and tower, our SenseVoice and projector modules, upstream-style
injection, our torch loop): the prompts are eval_omni.py's and the greedy codes are identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch_side import TorchEncoders

from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import chat_prompt_ids, reference_generate
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import Conversation, OmniModel

EVAL = Path(__file__).parent / "fixtures" / "eval_omni"
CLIPS = sorted(EVAL.glob("audio-*.mp3"))
IMAGES = sorted(EVAL.glob("image-*.jpg"))
MIXED = list(zip(sorted(EVAL.glob("img-*.mp3")), IMAGES))  # eval_omni.py mode 5: a spoken question about an image
STEPS = 12


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    return OmniModel.load(tiny_bundle)


@pytest.fixture(scope="module")
def torch_side(tiny_torch_model, tiny_siglip, tiny_sensevoice):
    return TorchEncoders(tiny_torch_model, tiny_siglip, tiny_sensevoice)


def run(model, text=None, audio=None, images=()) -> CodeDump:
    record = CodeDump([])
    list(Conversation(model).respond(text, GenerationOptions(max_new_tokens=STEPS, greedy=True), decode_audio=False,
                                     record=record, audio=audio, images=tuple(images)))
    return record


def check(got: CodeDump, torch_side, content: str, audio, images) -> None:
    ids = chat_prompt_ids([{"role": "user", "content": content}])
    assert got.prompt_ids == ids
    ref = reference_generate(torch_side.model, ids, STEPS, greedy=True,
                             prefill_embeds=torch_side.prefill_embeds(ids, audio, images))
    assert (got.text_ids, got.audio_codes, got.frames) == (ref.text_ids, ref.audio_codes, ref.frames)


@pytest.mark.parametrize("clip", CLIPS, ids=[c.stem[:12] for c in CLIPS])
def test_spoken_question(runtime, torch_side, clip):
    feats = torch_side.audio(clip)
    check(run(runtime, audio=clip), torch_side, "<|audio_pad|>" * len(feats), feats, [])


@pytest.mark.parametrize("image", IMAGES, ids=[i.stem[:8] for i in IMAGES])
def test_image(runtime, torch_side, image):
    check(run(runtime, images=[image]), torch_side, "Please describe this image.\n\n" + "<|image_pad|>" * 64,
          None, [torch_side.image(image)])


@pytest.mark.parametrize("clip,image", MIXED, ids=[c.stem[:6] for c, _ in MIXED])
def test_spoken_question_about_an_image(runtime, torch_side, clip, image):
    feats = torch_side.audio(clip)
    content = "Please answer me: " + "<|audio_pad|>" * len(feats) + "\n\n" + "<|image_pad|>" * 64
    check(run(runtime, audio=clip, images=[image]), torch_side, content, feats, [torch_side.image(image)])
