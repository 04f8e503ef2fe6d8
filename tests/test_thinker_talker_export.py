"""Thinker/Talker ONNX graphs vs the torch module: contract, parity at several (seq, past_seq), and a runtime-style
prefill + decode loop that writes only the returned new K/V into a preallocated cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from omni_onnx.config import TINY
from omni_onnx.contracts import GraphSpec, TensorSpec, talker_spec, thinker_spec
from omni_onnx.export import talker, thinker
from omni_onnx.export.common import ParityError, export_graph, verify_parity
from omni_onnx.export.modeling import OmniTorchModel
from omni_onnx.export.random_checkpoint import random_state_dict
from omni_onnx.session import GraphSession


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "moe"])
def exported(request, tmp_path_factory):
    cfg = dataclasses.replace(TINY, use_moe=request.param)
    model = OmniTorchModel(cfg).eval()
    model.load_state_dict(random_state_dict(cfg, seed=4))
    out = tmp_path_factory.mktemp("graphs")
    return model, thinker.export(model, out), talker.export(model, out)


def test_graphs_match_contract(exported):
    model, tpath, kpath = exported
    for path, spec in ((tpath, thinker_spec(model.cfg)), (kpath, talker_spec(model.cfg))):
        sess = GraphSession(path, spec)  # raises ContractError on any name/dtype/dim difference
        assert [i.name for i in sess.sess.get_inputs()] == [t.name for t in spec.inputs]
        assert [o.name for o in sess.sess.get_outputs()] == [t.name for t in spec.outputs]


def test_parity_at_prefill_and_decode_shapes(exported):
    model, tpath, kpath = exported
    cases = [(5, 0), (1, 0), (1, 8), (3, 4)]
    for mod, path, spec in ((thinker, tpath, thinker_spec(model.cfg)), (talker, kpath, talker_spec(model.cfg))):
        diffs = mod.verify(model, path, cases)
        assert len(diffs) == len(cases)
        assert max(max(d.values()) for d in diffs.values()) <= spec.atol


def test_runtime_style_loop_matches_full_sequence_forward(exported):
    """Prefill L positions, then decode one at a time feeding back only the cache prefix that is filled."""
    model, tpath, kpath = exported
    cfg, L, steps = model.cfg, 6, 4
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, cfg.vocab_size, (1, L + steps), generator=g)
    codes = torch.randint(0, 2048, (1, cfg.num_codebooks, L + steps), generator=g)
    codes[:, :, L - 1] = cfg.audio_spk_code
    spk = torch.randn(1, cfg.spk_emb_size, generator=g)
    spk_mask = codes[:, 0] == cfg.audio_spk_code
    with torch.no_grad():
        ref_text, bridge, _ = model.thinker_forward(ids)
        ref_audio, _ = model.talker_forward(bridge, codes, spk_emb=spk, spk_mask=spk_mask)

    th, tk = GraphSession(tpath, thinker_spec(cfg)), GraphSession(kpath, talker_spec(cfg))
    caches = [{t.name: np.zeros((1, L + steps) + t.dims[2:], np.float32) for t in s.spec.inputs
               if t.name.startswith("past_")} for s in (th, tk)]  # one preallocated cache per graph
    pos = 0
    for end in [L] + list(range(L + 1, L + steps + 1)):
        sl = slice(pos, end)
        t_out = th.run({"input_ids": ids[:, sl].numpy(), "feature_mask": np.zeros((1, end - pos), bool),
                        "feature_embeds": np.zeros((1, end - pos, cfg.hidden_size), np.float32),
                        **{n: c[:, :pos] for n, c in caches[0].items()}})
        k_out = tk.run({"bridge": t_out["bridge"], "codes": codes[:, :, sl].numpy(),
                        "spk_mask": spk_mask[:, sl].numpy(), "spk_emb": spk.numpy(),
                        **{n: c[:, :pos] for n, c in caches[1].items()}})
        np.testing.assert_allclose(t_out["logits"], ref_text[:, end - 1].numpy(), atol=1e-4)
        np.testing.assert_allclose(k_out["audio_logits"], ref_audio[:, :, end - 1].numpy(), atol=1e-4)
        for out, cache in zip((t_out, k_out), caches):
            for name, value in out.items():
                if name.startswith("present_"):
                    cache["past_" + name[len("present_"):]][:, sl] = value
        pos = end


def test_verify_parity_reports_every_failure():
    spec = GraphSpec("g", 1, (), (TensorSpec("a", "float32", (2,)), TensorSpec("b", "float32", (2,)),
                                  TensorSpec("c", "float32", (2,)), TensorSpec("d", "float32", (2,))), atol=1e-4)
    ref = {"a": np.zeros(2), "b": np.zeros(2), "c": np.zeros(2), "d": np.zeros(2)}
    got = {"a": np.array([0.0, 1e-5]), "b": np.array([0.0, 0.5]), "c": np.array([np.nan, 0.0]), "d": np.zeros(3)}
    with pytest.raises(ParityError) as e:
        verify_parity(spec, ref, got)
    msg = str(e.value)
    assert "- b: max diff 0.5 = 0.5 of its scale 1 > 0.0001" in msg and "- c: max diff nan" in msg
    assert "- d: shape (3,)" in msg
    assert "- a:" not in msg


def test_export_graph_rejects_inputs_that_differ_from_the_spec(tmp_path):
    model = OmniTorchModel(TINY)
    feeds = thinker.dummy_inputs(TINY)
    del feeds["feature_mask"]
    with pytest.raises(ValueError, match=r"missing \['feature_mask'\]"):
        export_graph(thinker.ThinkerGraph(model), feeds, thinker_spec(TINY), tmp_path / "x.onnx")
