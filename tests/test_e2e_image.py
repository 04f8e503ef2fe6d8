"""Image in, end to end on a tiny bundle: prompt ids as upstream's eval builds them, and greedy codes identical to
our torch reference loop fed by transformers' own SigLIP processor and tower (injected upstream-style)."""

from __future__ import annotations

from pathlib import Path

from torch_side import TorchEncoders

from omni_onnx.cli import main
from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import chat_prompt_ids, reference_generate

FIXTURES = Path(__file__).parent / "fixtures"
IMAGE = FIXTURES / "eval_omni" / "image-01-orange-cat-moon-desk.jpg"


def test_image_question_matches_reference(tiny_bundle, tiny_torch_model, tiny_siglip, tiny_sensevoice, tmp_path):
    dump_path = tmp_path / "img.json"
    assert main(["--bundle", str(tiny_bundle), "--image", str(IMAGE), "--text", "What is in this picture?",
                 "--greedy", "--max-new-tokens", "24", "--dump-codes", str(dump_path)]) == 0
    got = CodeDump.read(dump_path)
    ids = chat_prompt_ids([{"role": "user", "content": "What is in this picture?\n\n" + "<|image_pad|>" * 64}])
    assert got.prompt_ids == ids
    enc = TorchEncoders(tiny_torch_model, tiny_siglip, tiny_sensevoice)
    ref = reference_generate(tiny_torch_model, ids, 24, greedy=True,
                             prefill_embeds=enc.prefill_embeds(ids, None, [enc.image(IMAGE)]))
    assert (got.text_ids, got.audio_codes, got.frames) == (ref.text_ids, ref.audio_codes, ref.frames)


def test_image_without_text_uses_the_eval_prompt(tiny_bundle, tmp_path):
    dump_path = tmp_path / "img.json"
    assert main(["--bundle", str(tiny_bundle), "--image", str(IMAGE), "--greedy", "--max-new-tokens", "4",
                 "--dump-codes", str(dump_path)]) == 0
    ids = chat_prompt_ids([{"role": "user", "content": "Please describe this image.\n\n" + "<|image_pad|>" * 64}])
    assert CodeDump.read(dump_path).prompt_ids == ids


def test_bad_images_are_one_clear_line(tiny_bundle, tmp_path, capsys):
    from PIL import Image
    text = tmp_path / "notes.jpg"
    text.write_text("just text")
    big = tmp_path / "big.png"
    Image.new("L", (5472, 3656)).save(big)  # 20 MP
    for bad, needle in ((text, "not an image"), (big, "20.0 MP")):
        assert main(["--bundle", str(tiny_bundle), "--image", str(bad), "--text", "hi"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and bad.name in err and needle in err, err
