"""omni-bench: the quick run's JSON schema on tiny bundles, and the CER against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omni_onnx.bench import quality
from omni_onnx.bench.cli import main


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


def test_eval_questions():
    qs = quality.eval_questions()
    assert len(qs) == 28 and {q.language for q in qs} == {"en", "zh"}
    assert qs[0].text == "what do you usually like to eat" and qs[14].text == "你平时喜欢吃什么"


@pytest.fixture(scope="module")
def lively_bundle(tiny_lively_checkpoint, tiny_mimi, tiny_sensevoice, tmp_path_factory) -> Path:
    """The tiny model answers in newlines only (nothing to score); amplified weights give real characters."""
    from omni_onnx.export.cli import Sources, export_bundle
    return export_bundle(Sources(tiny_lively_checkpoint, tiny_mimi, None, tiny_sensevoice, voices=()),
                         tmp_path_factory.mktemp("lively") / "bundle", verify=False)


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


def test_quick_run_schema(tiny_bundle, lively_bundle, tmp_path):
    assert main(["--bundle", str(tiny_bundle), "--bundle", str(lively_bundle), "--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    m = r["machine"]
    assert m["cpu"] and isinstance(m["cpu_flags"], list) and m["threads"] == 2
    assert m["versions"]["onnxruntime"] and m["versions"]["numpy"]
    assert r["quick"] is True and r["suites"] == ["latency", "memory", "quality"] and len(r["bundles"]) == 2
    for b in r["bundles"]:
        ident = b["bundle"]
        assert len(ident["manifest_sha256"]) == 64 and ident["source"]["checkpoint"] == "sft_omni_768.pth"
        assert {"thinker", "talker", "mimi_decoder", "sensevoice"} <= set(ident["graphs_sha256"])
        lat = b["latency"]
        assert set(lat["steps"]) == {"8", "32"}
        for s in lat["steps"].values():
            for k in ("ort_prefill", "ort_step"):
                assert {"median_ms", "p90_ms", "min_ms", "n"} <= set(s[k])
        assert {"mimi_frame", "sensevoice_3s", "answer"} <= set(lat)
        assert all(lat["answer"][k] is not None for k in lat["answer"])
        mem = b["memory"]
        assert mem["bundle_mb"] > sum(mem["graph_mb"].values()) > 0
        assert mem["peak_rss_turn_mb"] >= mem["peak_rss_after_load_mb"] > 0
        q = b["quality"]
        assert q["prompts"] == 2 and len(q["samples"]) == 2 and q["similarity"] is None
        assert q["paper"]["dense"]["cer"] == 0.0897 and q["paper"]["moe"]["similarity"] == 0.5937
    scored = r["bundles"][1]["quality"]
    assert scored["scored"] == 2 and scored["cer_mean"] is not None and scored["cer_corpus"] is not None
    for s in scored["samples"]:  # the figure is the CER of what the runtime said and what SenseVoice heard
        assert s["cer"] == pytest.approx(quality.cer(s["text"], s["transcript"]))
    for where, x in numbers(r):
        assert math.isfinite(x), where
        assert x > 0 or where.endswith(("scored", ".cer", "cer_mean", "cer_corpus")), where
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "0.0897" in md and "0.5995" in md and "weights:" in md and "sft_omni_768.pth" in md
    assert (tmp_path / "step_latency.png").is_file() == _has_matplotlib()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_bad_suite(tiny_bundle, tmp_path):
    with pytest.raises(SystemExit):
        main(["--bundle", str(tiny_bundle), "--suite", "latency,speed", "--out", str(tmp_path)])
