"""Static bundle (`omni-export --static`) and ORT format: fixed shapes everywhere, torch parity with garbage in the
masked cache slots and the chunk padding, greedy ids + codes identical to the dynamic bundle (prompts shorter and
longer than a chunk, a voice, a second turn, image and audio features), the context-full stop, and .ort graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from omni_onnx.contracts import PREFILL_SUFFIX, StaticShape
from omni_onnx.dump import CodeDump
from omni_onnx.errors import OmniError
from omni_onnx.generate import Features, GenerationOptions, Speaker, generate
from omni_onnx.inject import prompt_features
from omni_onnx.model import Conversation, OmniModel, TurnEnd
from omni_onnx.session import GraphSession

SHAPE = StaticShape(context=160, prefill_chunk=8)  # tiny_static_bundle's (conftest)
GREEDY = GenerationOptions(max_new_tokens=40, greedy=True)


@pytest.fixture(scope="module")
def static_bundle(tiny_static_bundle) -> Path:
    assert OmniModel.load(tiny_static_bundle).static == SHAPE
    return tiny_static_bundle


@pytest.fixture(scope="module")
def dynamic_bundle(tiny_lively_checkpoint, tmp_path_factory) -> Path:
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(tiny_lively_checkpoint), tmp_path_factory.mktemp("dynamic") / "bundle", verify=False)


@pytest.fixture(scope="module")
def models(static_bundle, dynamic_bundle) -> tuple[OmniModel, OmniModel]:
    return OmniModel.load(static_bundle), OmniModel.load(dynamic_bundle)


def test_static_bundle_has_no_symbolic_dims(static_bundle):
    from omni_onnx.export.static_graphs import symbolic_dims
    manifest = json.loads((static_bundle / "manifest.json").read_text())
    assert manifest["static"] == {"context": 160, "prefill_chunk": 8}
    assert set(manifest["graphs"]) == {"thinker", "talker", "thinker_prefill", "talker_prefill", "mimi_decoder",
                                       "vision"}
    for name, entry in manifest["graphs"].items():
        assert symbolic_dims(static_bundle / entry["file"]) == [], name  # inputs, outputs and every intermediate
        if name.startswith(("thinker", "talker")):
            graph = onnx.shape_inference.infer_shapes(onnx.load(static_bundle / entry["file"])).graph
            # fp32 throughout (a traced Python-float mask once made the softmax float64)
            assert onnx.TensorProto.DOUBLE not in {v.type.tensor_type.elem_type for v in graph.value_info}, name
            # the buffers go only into GroupQueryAttention, which writes the chunk into them (bound in place by the
            # runtime) and reads the filled slots only: no other node reads or copies a whole buffer
            assert {n.op_type for n in graph.node if any(i.startswith("past_") for i in n.input)} == {
                "GroupQueryAttention"}, name
            assert {n.op_type for n in graph.node if any(o.startswith("present_") for o in n.output)} == {
                "GroupQueryAttention"}, name


def test_static_graphs_match_torch(static_bundle, tiny_lively_checkpoint):
    """Independent reference: the torch modules run on the real part only (cache[:position], chunk[:length]),
    while the graph also gets random values in the masked slots and the padding."""
    from omni_onnx.bundle import Bundle
    from omni_onnx.export.checkpoint import load_model
    from omni_onnx.export.static_graphs import verify
    model, bundle = load_model(tiny_lively_checkpoint), Bundle.open(static_bundle)
    for name in ("thinker", "talker", "thinker" + PREFILL_SUFFIX, "talker" + PREFILL_SUFFIX):
        verify(model, bundle.graph_path(name), bundle.specs[name])


def _reply(model: OmniModel, turns: list[str], voice: str | None = None) -> list[CodeDump]:
    conv, dumps = Conversation(model, voice, context=SHAPE.context), []
    for text in turns:
        dumps.append(CodeDump([]))
        list(conv.respond(text, GREEDY, decode_audio=False, record=dumps[-1]))
    return dumps


@pytest.mark.parametrize("turns, voice", [
    (["Hi"], None),  # the chat template makes even this longer than one chunk; the answer's steps are decodes
    (["Why is the sky blue? Explain it to a child in two sentences."], "chelsie"),
    (["Why is the sky blue?", "And why is the sunset red?"], None),  # the second turn reuses the cached prefix
])
def test_greedy_ids_and_codes_equal_dynamic(models, turns, voice):
    static, dynamic = (_reply(m, turns, voice) for m in models)
    for s, d in zip(static, dynamic):
        assert s.prompt_ids == d.prompt_ids
        assert s.text_ids == d.text_ids
        assert s.audio_codes == d.audio_codes and s.frames == d.frames and s.frames
        assert len({c for row in s.audio_codes for c in row}) > 3  # varied, not one repeated code


def _stream(model: OmniModel, ids: list[int], features: Features) -> list[tuple]:
    stepper = Conversation(model, context=SHAPE.context).stepper
    return [(s.token, None if s.frame is None else s.frame.tolist())
            for s in generate(stepper, ids, Speaker(None, None), GREEDY, None, None, features)]


def test_image_and_audio_features_through_chunked_prefill(models, tmp_path):
    from PIL import Image
    static, dynamic = models
    path = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
    image = static.encode_image(path)
    audio = np.random.default_rng(1).standard_normal((13, static.config.hidden_size)).astype(np.float32) * 0.02
    conv = Conversation(static)
    ids = conv.prompt_ids(f"Describe it.{'<|audio_pad|>' * 13}{'<|image_pad|>' * 64}")
    features = prompt_features(ids, static.config, audio, [image])
    assert features.mask.sum() == 13 + 64 and len(ids) > 8 * SHAPE.prefill_chunk
    got = _stream(static, ids, features)
    assert got == _stream(dynamic, ids, features) and len(got) == GREEDY.max_new_tokens


def test_context_full_stops_like_dynamic(models):
    """At capacity both bundles stop the turn with reason "context" (omni-run prints "context full") after the
    same tokens; a prompt that does not fit is refused before any work."""
    long = GenerationOptions(max_new_tokens=500, greedy=True)
    ends = []
    for model in models:
        conv = Conversation(model, context=SHAPE.context)
        events = list(conv.respond("Why is the sky blue?", long, decode_audio=False))
        assert conv.state.length == SHAPE.context
        ends.append(events[-1])
        with pytest.raises(OmniError, match="context (holds|is fixed at) 160"):
            list(Conversation(model, context=SHAPE.context).respond("sky " * 200, long, decode_audio=False))
    assert isinstance(ends[0], TurnEnd) and ends[0].reason == "context" and ends[0] == ends[1]


def test_static_context_is_the_bundles(models):
    assert Conversation(models[0], context=4096).state.capacity == SHAPE.context


def test_static_specs_derive_from_the_dynamic_ones():
    from omni_onnx.config import TINY
    from omni_onnx.contracts import thinker_spec
    specs = StaticShape(64, 1).specs(TINY)
    assert set(specs) == {"thinker", "talker"}  # chunk 1: the decode graphs also prefill
    dynamic, static = thinker_spec(TINY), specs["thinker"]
    assert [t.name for t in static.inputs] == [t.name for t in dynamic.inputs][:3] + ["position", "length"] + [
        t.name for t in dynamic.inputs][3:]
    buffer = (1, TINY.num_key_value_heads, 64, TINY.head_dim)  # heads first: GroupQueryAttention's layout
    assert static.dynamic_axes() == {} and static.inputs[5].dims == buffer and static.outputs[2].dims == buffer
    with pytest.raises(ValueError, match="prefill chunk"):
        StaticShape(64, 65)


def test_version_1_static_bundle_is_refused(static_bundle, tmp_path):
    """A static bundle from before the buffer layout changed (contract version 1) gets the re-export message."""
    from omni_onnx.bundle import Bundle
    from omni_onnx.errors import BundleError
    old = tmp_path / "old"
    shutil.copytree(static_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("thinker", "talker", "thinker_prefill", "talker_prefill"):
        manifest["graphs"][name]["contract"]["version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="version 1, this code needs 2.*re-export"):
        Bundle.open(old)


def test_ort_format_loads_and_runs_like_onnx(static_bundle, tmp_path):
    from omni_onnx.bundle import Bundle
    from omni_onnx.export.ort_format import REQUIRED_OPERATORS, USABILITY_REPORT, convert_bundle
    onnx_bundle = Bundle.open(static_bundle)
    copy = tmp_path / "ort"
    shutil.copytree(static_bundle, copy)
    convert_bundle(copy)
    bundle = Bundle.open(copy)  # checksums and contracts of the .ort files
    assert all(bundle.graph_path(n).suffix == ".ort" for n in bundle.specs)
    assert not list(copy.glob("*.onnx"))
    assert "com.microsoft" in (copy / REQUIRED_OPERATORS).read_text()
    assert "NNAPI" in (copy / USABILITY_REPORT).read_text()
    rng = np.random.default_rng(0)
    for name in ("thinker", "talker_prefill", "mimi_decoder"):
        spec = bundle.specs[name]
        feeds = {t.name: (rng.integers(0, 8, t.dims) if t.dtype == "int64" else
                          rng.standard_normal(t.dims) if t.dtype == "float32" else np.zeros(t.dims)).astype(t.dtype)
                 for t in spec.inputs}
        if "length" in feeds:
            feeds["position"], feeds["length"] = np.array([5]), np.array([3 if "prefill" in name else 1])
        got = GraphSession(bundle.graph_path(name), spec).run(feeds)
        want = GraphSession(onnx_bundle.graph_path(name), spec).run(feeds)
        filled = int(feeds["position"][0] + feeds["length"][0]) if "length" in feeds else None
        for k in want:  # an unbound present_* buffer holds the filled slots and the chunk's; the rest is unspecified
            cut = (slice(None), slice(None), slice(0, filled)) if k.startswith("present_") and filled else ()
            np.testing.assert_allclose(got[k][cut], want[k][cut], rtol=0, atol=1e-5, err_msg=f"{name}.{k}")
    dumps = [_reply(OmniModel.load(b), ["Hi"])[0] for b in (static_bundle, copy)]
    assert dumps[0].text_ids == dumps[1].text_ids and dumps[0].audio_codes == dumps[1].audio_codes


def _external_refs(path: Path) -> set[tuple[str, str, str]]:
    """(location, offset, length) of every initializer a graph keeps in an external file."""
    graph = onnx.load(path, load_external_data=False).graph
    refs = ({e.key: e.value for e in t.external_data} for t in graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL)
    return {(r["location"], r["offset"], r["length"]) for r in refs}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_decode_and_prefill_graphs_store_their_weights_once(static_bundle, tmp_path, precision):
    """Each model's decode and prefill graph refer to the same bytes of one weights file, which holds each weight
    once (fp32 as exported; int8 after omni-quant rewrote the graphs), and the bundle still answers."""
    from omni_onnx.export.shared_weights import WEIGHTS_FILE
    from omni_onnx.quant.cli import main as quant_main
    root = static_bundle
    if precision == "int8":
        root = tmp_path / "int8"
        assert quant_main([str(static_bundle), "--to", "int8", "--out", str(root)]) == 0
    refs = {name: _external_refs(root / f"{name}.onnx") for name in
            ("thinker", "thinker_prefill", "talker", "talker_prefill")}
    assert refs["thinker"] and refs["thinker"] == refs["thinker_prefill"]
    assert refs["talker"] and refs["talker"] == refs["talker_prefill"]
    assert {loc for r in refs.values() for loc, _, _ in r} == {WEIGHTS_FILE}
    stored = sum(int(length) for _, _, length in refs["thinker"] | refs["talker"])
    assert stored <= (root / WEIGHTS_FILE).stat().st_size < stored + 64 * len(refs["thinker"] | refs["talker"])
    assert json.loads((root / "manifest.json").read_text())["files"][WEIGHTS_FILE]  # its checksum is verified
    assert _reply(OmniModel.load(root), ["Hi"])[0].text_ids
