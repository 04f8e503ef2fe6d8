"""omni-quant on the tiny bundle: the int8 copy keeps every graph's contract and the manifest's checksums, its
greedy run completes and is reported against the torch reference as an agreement rate, and the report is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omni_onnx.bundle import Bundle
from omni_onnx.dump import CodeDump
from omni_onnx.export.reference import chat_prompt_ids, reference_generate
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import Conversation, OmniModel
from omni_onnx.quant.cli import REPORT, main
from omni_onnx.quant.fidelity import agreement, compare, snr_db
from omni_onnx.quant.recipes import INT8

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
        assert entry["precision"] == recipe.precision == "int8" and entry["recipe"] == recipe.to_dict()
        assert entry["sha256"] != src.manifest["graphs"][name]["sha256"]
    assert dst.manifest["files"] == src.manifest["files"]  # side files copied unchanged
    model = OmniModel(dst)  # GraphSession checks each graph against its contract
    assert None not in (model.mimi, model.vision, model.speech)
    assert dst.graph_path("talker").stat().st_size < 0.8 * src.graph_path("talker").stat().st_size


def test_int8_greedy_run_against_torch_reference(int8_bundle, tiny_torch_model):
    model = OmniModel.load(int8_bundle)
    dump = CodeDump([])
    events = list(Conversation(model).respond(QUESTION, GenerationOptions(max_new_tokens=32, greedy=True),
                                              record=dump))
    ref = reference_generate(tiny_torch_model, chat_prompt_ids([{"role": "user", "content": QUESTION}]), 32,
                             greedy=True)
    assert dump.prompt_ids == ref.prompt_ids and len(dump.frames) > 0 and events[-1].reason in ("eos", "length")
    text = agreement(dump.text_ids, ref.text_ids)
    codes = [agreement(a, b) for a, b in zip(dump.audio_codes, ref.audio_codes)]
    print(f"int8 vs torch fp32 greedy agreement: text {text}, codebooks {codes}")
    assert text >= 0.5 and np.mean(codes) >= 0.5  # loose: int8 need not reproduce fp32's codes


def test_report_compares_every_graph(int8_bundle, tiny_bundle):
    r = json.loads((int8_bundle / f"{REPORT}.json").read_text())
    md = (int8_bundle / f"{REPORT}.md").read_text()
    assert r["weights"] == Bundle.open(tiny_bundle).manifest["source"]
    assert set(r["outputs"]) == set(r["graphs"]) - {"mimi_decoder"}
    for name, outs in r["outputs"].items():
        assert all(c["cosine"] > 0.99 for c in outs.values()), (name, outs)
    assert r["teacher_forced"]["steps"] == 8 * len(r["teacher_forced"]["prompts"])
    assert 0 <= r["teacher_forced"]["text_top1"] <= 1 and len(r["free_running"]["codebooks"]) == 8
    assert r["mimi_audio"]["snr_db"] > 30
    assert "Teacher-forced top-1" in md and "Mimi audio" in md and "sft_omni_768.pth" in md


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
