"""omni-quant on the tiny bundle: the int8 and int4 copies keep every graph's contract and the manifest's checksums,
their greedy runs complete and are reported against the torch reference as agreement rates, the report is written;
int8 lookup tables against numpy; omni-export --precision; the onnxruntime floor an int4 bundle names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from omni_onnx.bundle import MANIFEST, Bundle
from omni_onnx.dump import CodeDump
from omni_onnx.errors import BundleError
from omni_onnx.export.reference import chat_prompt_ids, reference_generate
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import Conversation, OmniModel
from omni_onnx.quant.cli import REPORT, main
from omni_onnx.quant.fidelity import agreement, compare, snr_db
from omni_onnx.quant.fp16_storage import store_fp16
from omni_onnx.quant.gather_int8 import quantize_gathers
from omni_onnx.quant.recipes import INT4, INT8
from omni_onnx.session import SessionOptions, make_session, ort_session_options
from onnx import TensorProto, helper, numpy_helper

QUESTION = "Why is the sky blue?"


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quant") / "tiny-int8"
    assert main([str(tiny_bundle), "--to", "int8", "--out", str(out), "--report", "--steps", "8"]) == 0
    return out


def test_every_graph_loads_with_its_contract(tiny_bundle, int8_bundle):
    src, dst = Bundle.open(tiny_bundle), Bundle.open(int8_bundle)  # checksums verified
    assert dst.specs == src.specs and dst.manifest["source"] == src.manifest["source"]
    for name, entry in dst.manifest["graphs"].items():
        recipe = INT8.for_graph(name)
        assert entry["precision"] == recipe.precision and entry["recipe"] == recipe.to_dict()
        changed = entry["sha256"] != src.manifest["graphs"][name]["sha256"]
        assert changed == (name in INT8.graphs) and (recipe.precision == "int8") == (name in INT8.graphs)
    assert set(INT8.graphs) - {"mimi_encoder", "campplus"} <= set(dst.manifest["graphs"])  # those: the cloning test
    assert dst.manifest["files"] == src.manifest["files"]  # side files copied unchanged
    model = OmniModel(dst)  # GraphSession checks each graph against its contract
    assert None not in (model.mimi, model.vision, model.speech)
    # 8-bit blockwise weights on the decode graphs' MatMuls; the rank-16 adapters (fewer inputs than a block) are
    # left to the dynamic int8 pass, or the talker would shrink less than this
    assert dst.graph_path("talker").stat().st_size < 0.8 * src.graph_path("talker").stat().st_size
    for name in ("thinker", "talker"):
        nbits = [n for n in onnx.load(dst.graph_path(name)).graph.node if n.op_type == "MatMulNBits"]
        assert nbits and all(helper.get_attribute_value(a) == 8 for n in nbits for a in n.attribute
                             if a.name == "bits")


@pytest.fixture(scope="module")
def int4_bundle(tiny_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quant") / "tiny-int4"
    assert main([str(tiny_bundle), "--to", "int4", "--out", str(out), "--report", "--steps", "8"]) == 0
    return out


def greedy_agreement(bundle: Path, torch_model) -> tuple[float, list[float]]:
    """Text and per-codebook agreement of the bundle's greedy run with the torch reference's (fp32)."""
    model = OmniModel.load(bundle)
    dump = CodeDump([])
    events = list(Conversation(model).respond(QUESTION, GenerationOptions(max_new_tokens=32, greedy=True),
                                              record=dump))
    ref = reference_generate(torch_model, chat_prompt_ids([{"role": "user", "content": QUESTION}]), 32,
                             greedy=True)
    assert dump.prompt_ids == ref.prompt_ids and len(dump.frames) > 0 and events[-1].reason in ("eos", "length")
    text = agreement(dump.text_ids, ref.text_ids)
    codes = [agreement(a, b) for a, b in zip(dump.audio_codes, ref.audio_codes)]
    print(f"{bundle.name} vs torch fp32 greedy agreement: text {text}, codebooks {codes}")
    return text, codes


def test_int8_greedy_run_against_torch_reference(int8_bundle, tiny_torch_model):
    text, codes = greedy_agreement(int8_bundle, tiny_torch_model)
    assert text >= 0.5 and np.mean(codes) >= 0.5  # loose: int8 need not reproduce fp32's codes


def test_int4_graphs_load_run_and_are_reported(int4_bundle, tiny_bundle, tiny_torch_model):
    dst = Bundle.open(int4_bundle)
    assert dst.specs == Bundle.open(tiny_bundle).specs
    for name, entry in dst.manifest["graphs"].items():
        assert entry["precision"] == INT4.for_graph(name).precision
    assert dst.manifest["graphs"]["thinker"]["precision"] == dst.manifest["graphs"]["talker"]["precision"] == "int4"
    assert dst.manifest["quantization"]["min_onnxruntime"] == ".".join(ort.__version__.split(".")[:2])
    assert "MatMulNBits" in {n.op_type for n in onnx.load(dst.graph_path("talker")).graph.node}
    OmniModel(dst)  # every graph against its contract
    greedy_agreement(int4_bundle, tiny_torch_model)  # completes; the agreement is printed, not bounded
    r = json.loads((int4_bundle / f"{REPORT}.json").read_text())
    assert r["recipe"] == "int4" and set(r["outputs"]) == (set(INT4.graphs) & set(dst.manifest["graphs"])) - {
        "mimi_decoder"}
    assert all(c["cosine"] > 0.9 for c in r["outputs"]["thinker"].values())


def test_lookup_tables_int8_per_row_and_tied_head_shared(int8_bundle, tiny_bundle):
    cfg = Bundle.open(tiny_bundle).config
    inits = onnx.load(Bundle.open(int8_bundle).graph_path("thinker")).graph.initializer
    tables = [t for t in inits if sorted(t.dims) == sorted((cfg.vocab_size, cfg.hidden_size))]
    assert [t.data_type for t in tables] == [TensorProto.INT8]  # one int8 copy serves the embedding and lm_head


def test_int8_lookup_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((300, 256)) * rng.uniform(0.01, 10, (300, 1))).astype(np.float32)  # row ranges differ
    ids = np.array([[0, 5, 299, 5]], np.int64)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, 4, 256])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert quantize_gathers(model) == ["table"]
    assert {t.name: t.data_type for t in model.graph.initializer}["table_int8"] == TensorProto.INT8
    onnx.save(model, tmp_path / "lookup.onnx")
    got = make_session(tmp_path / "lookup.onnx", SessionOptions()).run(None, {"ids": ids})[0]
    want = table[ids]
    half_step = np.abs(want).max(axis=-1, keepdims=True) / 254
    assert np.all(np.abs(got - want) <= half_step * 1.001)


def test_fp16_storage_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 300)).astype(np.float32)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 300])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert store_fp16(model) == ["w"]
    assert [t.data_type for t in model.graph.initializer] == [TensorProto.FLOAT16]
    onnx.save(model, tmp_path / "m.onnx")
    so = ort_session_options(SessionOptions())
    so.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), so, providers=["CPUExecutionProvider"])
    want = x.astype(np.float64) @ w.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    loaded = onnx.load(tmp_path / "loaded.onnx")  # the Cast is folded at load: fp32 weights, no per-run cast
    assert [t.data_type for t in loaded.graph.initializer] == [TensorProto.FLOAT]
    assert "Cast" not in {n.op_type for n in loaded.graph.node}


def test_export_precision_quantizes_in_place(tiny_checkpoint, tmp_path):
    """--precision quantizes the written bundle in place; --ort then converts the quantized graphs."""
    from omni_onnx.export.cli import main as export_main
    out = tmp_path / "bundle"
    assert export_main(["--checkpoint", str(tiny_checkpoint), "--skip-verify", "--precision", "int8", "--ort",
                        "--out", str(out)]) == 0
    b = Bundle.open(out)
    assert b.manifest["quantization"]["recipe"] == "int8"
    assert b.manifest["graphs"]["thinker"]["precision"] == "int8" and sorted(p.name for p in tmp_path.iterdir()) == [
        "bundle"]
    assert all(e["file"].endswith(".ort") for e in b.manifest["graphs"].values())
    assert "DynamicQuantizeMatMul" in (out / "ort_required_operators.config").read_text()
    OmniModel(b)  # the .ort graphs load against their contracts


def test_refuses_a_bundle_for_a_newer_onnxruntime(int4_bundle, tmp_path):
    copy = shutil.copytree(int4_bundle, tmp_path / "b")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["quantization"]["min_onnxruntime"] = "99.0"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"needs onnxruntime>=99\.0.*pip install -U"):
        Bundle.open(copy)


def test_report_compares_every_graph(int8_bundle, tiny_bundle):
    r = json.loads((int8_bundle / f"{REPORT}.json").read_text())
    md = (int8_bundle / f"{REPORT}.md").read_text()
    assert r["weights"] == Bundle.open(tiny_bundle).manifest["source"]
    present = set(Bundle.open(tiny_bundle).manifest["graphs"])
    assert set(r["outputs"]) == (set(INT8.graphs) & present) - {"mimi_decoder"}  # the quantized graphs
    for name, outs in r["outputs"].items():
        assert all(c["cosine"] > 0.99 for c in outs.values()), (name, outs)
    assert r["teacher_forced"]["steps"] == 8 * len(r["teacher_forced"]["prompts"])
    assert 0 <= r["teacher_forced"]["text_top1"] <= 1 and len(r["free_running"]["codebooks"]) == 8
    assert r["mimi_audio"]["snr_db"] > 30
    assert "Teacher-forced top-1" in md and "Mimi audio" in md and "sft_omni_768.pth" in md


def test_report_covers_the_cloning_graphs(tiny_clone_bundle, tmp_path):
    """The Mimi encoder is quantized like the decoder and compared by its codes; CAM++ computes in fp32 from fp16-stored
    weights and is compared too."""
    out = tmp_path / "clone-int8"
    assert main([str(tiny_clone_bundle), "--to", "int8", "--out", str(out), "--report", "--steps", "4"]) == 0
    r = json.loads((out / f"{REPORT}.json").read_text())
    assert r["graphs"]["mimi_encoder"]["precision"] == "int8" and r["graphs"]["campplus"]["precision"] == "fp32"
    assert 0.5 < r["outputs"]["mimi_encoder"]["codes"]["agreement"] <= 1
    assert r["outputs"]["campplus"]["embedding"]["cosine"] > 0.9999
    assert "of the codes equal" in (out / f"{REPORT}.md").read_text()


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1000)
    b = a + 0.01 * rng.standard_normal(1000)
    c = compare(a, b)
    assert c["cosine"] == pytest.approx(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-6)
    assert c["max_abs"] == pytest.approx(np.abs(a - b).max())
    assert snr_db(a, b) == pytest.approx(10 * np.log10((a ** 2).sum() / ((a - b) ** 2).sum()), abs=0.01)
    assert agreement([1, 2, 3], [1, 2]) == pytest.approx(2 / 3, abs=1e-4)


def test_refuses_to_overwrite_its_source(tiny_bundle, capsys):
    assert main([str(tiny_bundle), "--to", "int8", "--out", str(tiny_bundle)]) == 1
    assert "must differ" in capsys.readouterr().err


def test_vision_int8_fused_graph_against_torch(tiny_torch_model, tmp_path):
    """The exported vision graph (patch MatMul, fused Attention and FastGelu) through the int8 recipe: QAttention,
    the contract, and the features against transformers' fp32 forward. Every bias is drawn (random folders leave
    them 0, which would hide a q/k/v bias mix-up in the packed projection)."""
    import torch
    from omni_onnx.contracts import vision_spec
    from omni_onnx.export import siglip
    from omni_onnx.export.random_siglip import write_random_siglip
    from omni_onnx.quant.dynamic_int8 import quantize_graph
    from omni_onnx.session import GraphSession

    tower = siglip.load_siglip(write_random_siglip(tmp_path / "siglip", "tiny", seed=1))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if name.endswith("bias") and "layer_norm" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    fp32 = siglip.export(tower, tiny_torch_model, tmp_path / "fp32")
    assert all(d["image_embeds"] <= 1e-4 for d in siglip.verify(tower, tiny_torch_model, fp32).values())
    spec = vision_spec(tiny_torch_model.cfg)
    int8 = quantize_graph(fp32, tmp_path / "vision_int8.onnx", INT8.for_graph("vision"), spec, SessionOptions())
    ops = [n.op_type for n in onnx.load(int8).graph.node]
    assert ops.count("QAttention") == tower.config.num_hidden_layers and "Conv" not in ops
    for seed in (3, 4):
        feeds = siglip.dummy_inputs(siglip.image_size(tower), seed)
        want = siglip.reference_outputs(tower, tiny_torch_model, feeds)["image_embeds"].numpy()[0].astype(np.float64)
        got = GraphSession(int8, spec).run({"pixel_values": feeds["pixel_values"].numpy()})["image_embeds"][0]
        cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert cosine.min() >= 0.99, cosine.min()
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_gemms_become_matmuls_with_the_same_outputs():
    """The MatMulNBits quantizer takes MatMuls only: a Gemm on a constant B (transposed, as the tied lm_head on the
    embedding table, whose lookup keeps reading it; or with a bias, as the Talker's projector MLPs) becomes a
    MatMul on a [K, N] weight, plus an Add unless the bias is zeros."""
    from omni_onnx.quant.nbits import gemms_as_matmuls
    rng = np.random.default_rng(0)
    table, w, bias = (rng.standard_normal(s).astype(np.float32) for s in ((6, 4), (4, 5), (5,)))
    nodes = [helper.make_node("Constant", [], ["zeros"], value=numpy_helper.from_array(np.zeros(6, np.float32))),
             helper.make_node("Gemm", ["x", "table", "zeros"], ["head"], name="head", transB=1),
             helper.make_node("Gemm", ["x", "w", "bias"], ["proj"], name="proj"),
             helper.make_node("Gather", ["table", "ids"], ["rows"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                     helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("head", "proj", "rows")],
        [numpy_helper.from_array(a, n) for a, n in ((table, "table"), (w, "w"), (bias, "bias"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((2, 4)).astype(np.float32), "ids": np.array([3])}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), ort_session_options(SessionOptions()),
                                         providers=["CPUExecutionProvider"]).run(None, feeds)
    want = run(model)
    assert gemms_as_matmuls(model) == ["head", "proj"]
    assert [n.op_type for n in model.graph.node] == ["Constant", "MatMul", "MatMul", "Add", "Gather"]
    for got, ref in zip(run(model), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
