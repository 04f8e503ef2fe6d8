"""omni-bench: the quick run's JSON schema on tiny bundles (every suite, fidelity against our torch reference), and
CER / cosine similarity against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from omni_onnx.bench import floor, profile, quality, static_ratio
from omni_onnx.bench.cli import main
from omni_onnx.bench.compute import graph_macs
from omni_onnx.bench.fidelity import first_difference
from omni_onnx.errors import OmniError


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "helloworld"),
    ("ＨＥＬＬＯ，ｗｏｒｌｄ！１２３", "helloworld123"),  # full-width letters, digits, punctuation
    ("你好，世界。「测试」", "你好世界测试"),
    ("  it's   a\tcat\n", "itsacat"),
    ("“Quotes” — and… ~symbols~ +", "quotesandsymbols"),
])
def test_normalise(raw, expected):
    assert quality.normalise(raw) == expected


def test_cer_hand_computed():
    # 今天天气很好 (6 chars) -> 今天天汽很好啊: 气->汽 substituted, 啊 inserted = 2 edits
    assert quality.cer("今天天气很好。", "今天天汽很好啊") == pytest.approx(2 / 6)
    # helloworld (10 chars) -> heloworld: one deletion; case, comma and spacing are normalised away
    assert quality.cer("Hello, world!", "helo WORLD") == pytest.approx(1 / 10)
    # the cat sat -> thecatsat (9); the hat sit -> thehatsit: c->h, a->i = 2 edits
    assert quality.cer("The cat sat.", "the hat sit") == pytest.approx(2 / 9)
    assert quality.cer("一二三", "") == 1.0
    assert quality.cer("ＡＢＣ", "abc") == 0.0
    with pytest.raises(ValueError, match="empty"):
        quality.cer("。！", "abc")


def test_cosine_hand_computed():
    assert quality.cosine([1, 0], [0, 1]) == 0.0
    assert quality.cosine([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert quality.cosine([1, 2, 3], [-1, -2, -3]) == pytest.approx(-1.0)
    assert quality.cosine([3, 4], [4, 3]) == pytest.approx(24 / 25)  # (12 + 12) / (5 * 5)
    assert quality.cosine(np.float32([1, 1]), np.float32([1, 0])) == pytest.approx(2 ** -0.5)
    with pytest.raises(ValueError, match="zero"):
        quality.cosine([0, 0], [1, 0])
    with pytest.raises(ValueError, match="sizes"):
        quality.cosine([1, 0], [1, 0, 0])


def test_graph_macs_hand_counted(tmp_path):
    """A transposed-input FusedMatMul candidate (MatMul of a Transpose), a Gemm + Relu (FusedGemm once optimized)
    and a depthwise Conv: the count must equal the multiply-accumulates worked out by hand."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (6, 5)), ("g", (7, 5)), ("c", (4, 1, 3)))]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),  # [2, 3, 6] -> [2, 6, 3]
             helper.make_node("MatMul", ["w2", "xt"], ["m"]),  # [5, 6] @ [2, 6, 3] -> [2, 5, 3]
             helper.make_node("Transpose", ["w"], ["w2"], perm=[1, 0]),
             helper.make_node("Reshape", ["m", "shape"], ["r"]),  # [6, 5]
             helper.make_node("Gemm", ["r", "g"], ["gm"], transB=1),  # [6, 5] x [5, 7] -> [6, 7]
             helper.make_node("Relu", ["gm"], ["y"]),
             helper.make_node("Conv", ["z", "c"], ["cz"], group=4)]  # [1, 4, 10] k=3 -> [1, 4, 8]
    for i, node in enumerate(nodes):  # exporters name every node; the count finds nodes by name
        node.name = f"n{i}"
    inits.append(numpy_helper.from_array(np.array([6, 5], np.int64), "shape"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("cz", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "macs.onnx"
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(onnx_model.SerializeToString())
    feeds = {"x": np.ones((2, 3, 6), np.float32), "z": np.ones((1, 4, 10), np.float32)}
    assert graph_macs(path, feeds, 1) == 2 * 5 * 3 * 6 + 6 * 7 * 5 + 4 * 8 * 3


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_eval_questions():
    qs = quality.eval_questions()
    assert len(qs) == 28 and {q.language for q in qs} == {"en", "zh"}
    assert qs[0].text == "what do you usually like to eat" and qs[14].text == "你平时喜欢吃什么"


def numbers(tree, path=""):
    """Every numeric leaf of a JSON tree with its path (bools are not numbers here)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def test_quick_run_schema(tiny_bundle, tiny_lively_bundle, tmp_path):
    assert main(["--bundle", str(tiny_bundle), "--bundle", str(tiny_lively_bundle), "--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    m = r["machine"]
    assert m["cpu"] and isinstance(m["cpu_flags"], list) and m["threads"] == 2
    assert m["versions"]["onnxruntime"] and m["versions"]["numpy"]
    assert r["quick"] is True and r["suites"] == ["latency", "floor", "memory", "quality"] and len(r["bundles"]) == 2
    for b in r["bundles"]:
        ident = b["bundle"]
        assert len(ident["manifest_sha256"]) == 64 and ident["source"]["checkpoint"] == "sft_omni_768.pth"
        assert {"thinker", "talker", "mimi_decoder", "sensevoice"} <= set(ident["graphs_sha256"])
        lat = b["latency"]
        assert set(lat["steps"]) == {"8", "32"}
        for s in lat["steps"].values():
            for k in ("ort_prefill", "ort_step"):
                assert {"median_ms", "p90_ms", "min_ms", "n"} <= set(s[k])
        assert {"mimi_frame", "sensevoice_3s", "answer", "loop_step"} <= set(lat)
        assert len(lat["loop_step"]["samples_ms"]) == lat["loop_step"]["n"] == 5
        assert all(lat["answer"][k] is not None for k in lat["answer"])
        for kind in ("text", "speech"):  # both bundles have Mimi and SenseVoice
            st = lat["first_audio"][kind]
            assert st["delay_steps"] == 8 and st["total_ms"] == pytest.approx(
                st["encoder_ms"] + st["prefill_ms"] + st["delay_steps_ms"] + st["mimi_frame_ms"], rel=1e-9)
        assert lat["first_audio"]["speech"]["prompt_tokens"] > lat["first_audio"]["text"]["prompt_tokens"]
        f = b["floor"]
        assert f["moe"] is False and f["frame_ms"] == 80
        assert f["floor_ms"] == pytest.approx(f["weight_mb"] / f["bandwidth_gbs"])
        # each pair sets its batch of steps against the bandwidth read right after it; the ratio is their median
        pairs = f["pairs"]
        assert len(pairs) == floor.ROUNDS and f["bandwidth_gbs"] == np.median([p["bandwidth_gbs"] for p in pairs])
        for p in pairs:
            assert p["step_over_floor"] == pytest.approx(p["step_ms"] * p["bandwidth_gbs"] / f["weight_mb"])
        assert f["step_over_floor"] == np.median([p["step_over_floor"] for p in pairs])
        graphs = [Path(ident["path"]) / g for g in ("thinker.onnx", "talker.onnx")]
        assert 0 < f["weight_mb"] * 1e6 <= sum(p.stat().st_size for p in graphs)  # lookup tables not counted
        mem = b["memory"]
        assert mem["bundle_mb"] > sum(mem["graph_mb"].values()) > 0
        assert mem["peak_rss_turn_mb"] >= mem["peak_rss_after_load_mb"] > 0
        every = mem["every_graph"]
        assert every["peak_rss_turn_mb"] >= every["peak_rss_after_load_mb"] > 0
        res = mem["residency"]  # every graph of the bundle, each peak measured on its own (Linux resets VmHWM)
        assert set(res["graphs"]) == set(mem["graph_mb"]) and res["process_mb"] > 0
        assert all(g["opening_peak_mb"] is not None for g in res["graphs"].values())
        q = b["quality"]
        assert q["prompts"] == 2 and len(q["samples"]) == 2
        assert q["voice_clone"]["similarity"] is None and "campplus" in q["voice_clone"]["note"]
        assert q["paper"]["dense"]["cer"] == 0.0897 and q["paper"]["moe"]["similarity"] == 0.5937
    scored = r["bundles"][1]["quality"]
    assert scored["scored"] == 2 and scored["cer_mean"] is not None and scored["cer_corpus"] is not None
    for s in scored["samples"]:  # the figure is the CER of what the runtime said and what SenseVoice heard
        assert s["cer"] == pytest.approx(quality.cer(s["text"], s["transcript"]))
    for where, x in numbers(r):
        assert math.isfinite(x), where
        assert x > 0 or where.endswith(("scored", ".cer", "cer_mean", "cer_corpus", "encoder_ms")), where
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "0.0897" in md and "0.5995" in md and "weights:" in md and "sft_omni_768.pth" in md
    assert md.count("steady real-time factor") == 2 and md.count("weight-streaming floor, context 64") == 2
    for png in ("step_latency.png", "first_audio.png", "precision.png"):
        assert (tmp_path / png).is_file() == _has_matplotlib()


def test_profile_sums_the_last_runs_per_op_type():
    """Two runs; only the last one counts (the first is the prefill); an If's time holds its branch's Mul, so the
    kernel sum leaves it out."""
    run = lambda ts, dur: {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}
    node = lambda name, op, ts, dur: {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                                      "args": {"op_name": op}}
    events = [run(0, 900), node("a", "MatMul", 10, 800), node("b", "Add", 820, 50),
              run(1000, 400), node("a", "MatMul", 1010, 300), node("a", "MatMul_fence_before", 1005, 1),
              node("b", "Add", 1320, 40), node("c", "If", 1360, 30), node("d", "Mul", 1365, 20)]
    events[5]["name"] = "a_fence_before"
    got = profile.per_op_type(events, runs=1)
    assert got == {"run_ms": 0.4, "kernel_ms": 0.36, "outside_kernels_ms": 0.04, "nodes": 3,
                   "ops": {"MatMul": {"ms": 0.3, "nodes": 1}, "Add": {"ms": 0.04, "nodes": 1},
                           "If": {"ms": 0.03, "nodes": 1}, "Mul": {"ms": 0.02, "nodes": 1}}}


def test_moe_over_dense_pairs_bundles_of_one_precision_and_recipe():
    run = lambda path, precision, moe, ms, recipe="new": {"bundle": {"path": path, "precision": precision,
                                                                      "recipe": recipe},
                                                           "floor": {"moe": moe, "step_ms": ms}}
    runs = [run("d8-old", "int8", False, 3.0, "old"), run("d8", "int8", False, 4.0), run("m4", "int4", True, 9.0),
            run("m8", "int8", True, 5.0), run("m8-old", "int8", True, 6.0, "old"),
            {"bundle": {"path": "x", "precision": "int8"}}]
    assert floor.moe_over_dense(runs) == [
        {"precision": "int8", "moe": "m8", "dense": "d8", "moe_step_ms": 5.0, "dense_step_ms": 4.0, "ratio": 1.25},
        {"precision": "int8", "moe": "m8-old", "dense": "d8-old", "moe_step_ms": 6.0, "dense_step_ms": 3.0,
         "ratio": 2.0}]


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_fidelity_suite(tiny_lively_bundle, tiny_lively_checkpoint, tiny_mimi, tiny_sensevoice, tmp_path):
    """The bundle against our torch modules in the same run: the same greedy text and codes as reference_generate,
    logits within float error, and every speed figure positive and finite."""
    assert main(["--bundle", str(tiny_lively_bundle), "--suite", "fidelity", "--quick", "--checkpoint",
                 str(tiny_lively_checkpoint), "--mimi", str(tiny_mimi), "--sensevoice", str(tiny_sensevoice),
                 "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert r["suites"] == ["fidelity"] and r["machine"]["versions"]["torch"]
    f = r["bundles"][0]["fidelity"]
    assert f["reference"]["same_weights"] is True and f["reference"]["siglip"] is None
    lg, g, sp = f["logits"], f["greedy"], f["speed"]
    assert lg["positions"] == 17 and lg["text_max_abs"] < 1e-3 * lg["logit_scale"] and lg["audio_max_abs"] < 1e-3
    assert lg["text_top1"] == lg["codebook_top1"] == 1.0
    assert g["steps_run"] == 16 and g["frames"] > 0 and g["text_tokens"] > 1
    assert g["prompt_identical"] and g["text_identical"] and g["codes_identical"] and g["frames_identical"]
    assert g["first_text_difference"] is None and g["first_code_difference"] is None
    assert set(sp["steps"]) == {"8", "32"}
    assert set(sp) == {"steps", "floor", "matmul_gflops", "mimi_frame", "sensevoice_3s", "sensevoice_6s",
                       "sensevoice_10s"}
    assert sp["sensevoice_3s"]["gmacs"] < sp["sensevoice_6s"]["gmacs"] < sp["sensevoice_10s"]["gmacs"]
    for s in sp["steps"].values():
        assert {"ort_prefill", "torch_prefill", "ort_step", "torch_step"} <= set(s)
    assert sp["mimi_frame"]["max_abs"] < 1e-4 and sp["sensevoice_3s"]["max_abs"] < 1e-4
    for where, x in numbers(r):
        assert math.isfinite(x), where
        assert x > 0 or where.endswith("max_abs"), where
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| greedy loop vs torch reference, 16 steps" in md and "identical |" in md and "ORT / torch" in md


def test_fidelity_needs_the_source_checkpoint(tiny_lively_bundle, tiny_checkpoint, tmp_path, capsys):
    assert main(["--bundle", str(tiny_lively_bundle), "--suite", "fidelity", "--out", str(tmp_path)]) == 1
    assert "give --checkpoint" in capsys.readouterr().err
    # the raw tiny checkpoint, not the lively one the bundle came from
    assert main(["--bundle", str(tiny_lively_bundle), "--suite", "fidelity", "--checkpoint", str(tiny_checkpoint),
                 "--out", str(tmp_path)]) == 1
    assert "pass the checkpoint the bundle was exported from" in capsys.readouterr().err


class FakeSpeakerEncoder:
    """Stands in for the CAM++ graph to pin the figure: records what it is given, returns a fixed vector."""

    def __init__(self, out: np.ndarray):
        self.out, self.lengths = out, []

    def embed(self, pcm16k: np.ndarray) -> np.ndarray:
        assert pcm16k.dtype == np.float32 and pcm16k.ndim == 1
        self.lengths.append(len(pcm16k))
        return self.out


def test_voice_similarity(tiny_bundle, tiny_clone_bundle):
    from omni_onnx.model import OmniModel

    questions = quality.eval_questions()[:2]
    assert "campplus" in quality.voice_similarity(OmniModel.load(tiny_bundle), questions, None, 8)["note"]
    model = OmniModel.load(tiny_clone_bundle)  # Mimi + CAM++ + the released voices
    res = quality.voice_similarity(model, questions, None, 24)  # the real CAM++ graph
    assert res["voice"] == model.bundle.voices[0] and res["scored"] == res["prompts"] == 2
    assert -1 <= res["similarity"] <= 1
    voice = model.bundle.voices[1]
    target = model.voice(voice).spk_emb
    other = np.roll(target, 1)
    model.speaker = FakeSpeakerEncoder(other)
    res = quality.voice_similarity(model, questions, voice, 24)
    expected = float(target @ other / (np.linalg.norm(target) * np.linalg.norm(other)))
    assert res["voice"] == voice and res["similarity"] == pytest.approx(expected, rel=1e-5)
    # each answer reached CAM++ at 16 kHz: 1920 samples per 24 kHz frame -> 1280
    assert len(model.speaker.lengths) == 2 and all(n % 1280 == 0 and n > 0 for n in model.speaker.lengths)


def test_bad_suite(tiny_bundle, tmp_path, capsys):
    assert main(["--bundle", str(tiny_bundle), "--suite", "latency,speed", "--out", str(tmp_path)]) == 1
    assert "unknown suite(s) speed" in capsys.readouterr().err


def test_static_suite_times_a_static_bundle_against_a_dynamic_one(tiny_static_bundle, tiny_lively_bundle, tmp_path,
                                                                  capsys):
    """`--suite static`: side-by-side decode step and prefill, at the contexts the static bundle holds (160 here:
    64 but not 256); one kind of bundle alone is refused with a message."""
    out = tmp_path / "r"
    assert main(["--bundle", str(tiny_lively_bundle), "--bundle", str(tiny_static_bundle), "--suite", "static", "--quick",
                 "--out", str(out)]) == 0
    (side,) = json.loads((out / "results.json").read_text(encoding="utf-8"))["static_vs_dynamic"]
    assert side["static"] == str(tiny_static_bundle) and side["dynamic"] == str(tiny_lively_bundle)
    for what in ("decode", "prefill"):
        (row,) = side[what].values()
        assert list(side[what]) == ["64"] and row["ratio"] == round(row["static_ms"] / row["dynamic_ms"], 3) > 0
    assert "Thinker+Talker decode step, context 64" in (out / "results.md").read_text(encoding="utf-8")
    assert main(["--bundle", str(tiny_lively_bundle), "--suite", "static", "--quick", "--out", str(out)]) == 1
    assert "a static bundle with a dynamic one" in capsys.readouterr().err


def test_static_pairs_match_precision_and_recipe(tmp_path):
    """Each static bundle meets the first dynamic bundle quantized the same way, so one run can hold a recipe's
    before and after."""
    def bundle(name: str, static: bool, method: str) -> Path:
        (tmp_path / name).mkdir()
        thinker = {"precision": "int8", "recipe": {"method": method}}
        (tmp_path / name / "manifest.json").write_text(json.dumps({"graphs": {"thinker": thinker},
                                                                   "static": {} if static else None}))
        return tmp_path / name
    d_old, d_new = bundle("d-old", False, "dynamic_int8"), bundle("d-new", False, "matmul_nbits")
    s_new, s_old = bundle("s-new", True, "matmul_nbits"), bundle("s-old", True, "dynamic_int8")
    assert static_ratio.static_pairs([d_old, d_new, s_new, s_old]) == [(s_new, d_new), (s_old, d_old)]
    with pytest.raises(OmniError, match="same weights, precision and recipe"):
        static_ratio.static_pairs([d_old, s_new])


def test_mimi_suite_against_transformers(tiny_bundle, tiny_mimi, tmp_path):
    """`--suite mimi`: our frame and transformers' streaming one-frame decode side by side on the bundle's weights;
    the fp32 bundle's audio SNR against transformers' whole decode is that of a float32 rounding, not of a drift."""
    out = tmp_path / "r"
    assert main(["--bundle", str(tiny_bundle), "--suite", "mimi", "--quick", "--mimi", str(tiny_mimi),
                 "--out", str(out)]) == 0
    m = json.loads((out / "results.json").read_text(encoding="utf-8"))["bundles"][0]["mimi"]
    assert m["precision"] == "fp32" and m["snr_db"] > 80 and m["frames_per_call"] == 4  # the tiny window's most
    assert m["ratio_per_frame"] == m["ours_per_frame_ms"] / m["transformers_frame_ms"] > 0
    assert "transformers' one-frame decode" in (out / "results.md").read_text(encoding="utf-8")


def test_mimi_suite_refuses_other_weights(tiny_bundle, tmp_path, capsys):
    from omni_onnx.export.random_mimi import write_random_mimi
    other = write_random_mimi(tmp_path / "other", "tiny", seed=1)
    assert main(["--bundle", str(tiny_bundle), "--suite", "mimi", "--quick", "--mimi", str(other),
                 "--out", str(tmp_path / "r")]) == 1
    assert "dB apart: pass --mimi" in capsys.readouterr().err
    assert main(["--bundle", str(tiny_bundle), "--suite", "mimi", "--quick", "--out", str(tmp_path / "r")]) == 1
    assert "pass --mimi" in capsys.readouterr().err


def test_demo_mimi_is_the_demo_export_s(tmp_path):
    """A demo bundle's Mimi is re-drawn from the seed and level omni-export --demo used: the same tensors."""
    import torch
    from omni_onnx.export.cli import DEMO_RMS_DBFS
    from omni_onnx.export.mimi_decoder import load_mimi, mimi_dims
    from omni_onnx.export.random_mimi import write_random_mimi
    from omni_onnx.bench.mimi_ratio import demo_mimi
    exported = load_mimi(write_random_mimi(tmp_path / "a", "tiny", seed=0, rms_dbfs=DEMO_RMS_DBFS))
    redrawn = load_mimi(demo_mimi(mimi_dims(exported), tmp_path / "b"))
    for (name, a), b in zip(exported.state_dict().items(), redrawn.state_dict().values()):
        assert torch.equal(a, b), name


def test_profile_of_a_mimi_call(tiny_bundle):
    res = profile.profile_mimi(tiny_bundle, frames_per_call=2, calls=3, threads=1)
    g = res["graphs"]["mimi_decoder"]
    assert g["nodes"] > 50 and "Conv" in g["ops"] and g["run_ms"] >= g["kernel_ms"] > 0
    assert "Mimi decoder call of 2 frame(s)" in profile.markdown(res)
    with pytest.raises(ValueError, match="1 to 4"):
        profile.profile_mimi(tiny_bundle, frames_per_call=5, calls=1, threads=1)
