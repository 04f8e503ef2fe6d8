"""MoE graphs run only the experts the router chose (export/moe_branches.py): each expert is an If branch, a decode
step computes what the torch module computes even when every other expert's weights are NaN (the traced one-hot
form multiplies them by 0 and gives NaN), a MoE bundle's greedy run is the torch reference loop's exactly, and the
int8 recipe quantizes the branches' MatMuls."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from omni_onnx.config import TINY
from omni_onnx.contracts import talker_spec, thinker_spec
from omni_onnx.dump import CodeDump
from omni_onnx.export import talker, thinker
from omni_onnx.export.checkpoint import load_model
from omni_onnx.export.cli import Sources, export_bundle
from omni_onnx.export.common import run_onnx, to_numpy
from omni_onnx.export.modeling import OmniTorchModel
from omni_onnx.export.random_checkpoint import random_state_dict, write_random_pth
from omni_onnx.export.reference import chat_prompt_ids, reference_generate
from omni_onnx.generate import GenerationOptions
from omni_onnx.model import Conversation, OmniModel
from omni_onnx.quant.dynamic_int8 import quantize_graph
from omni_onnx.quant.recipes import INT8
from omni_onnx.session import SessionOptions

CFG = dataclasses.replace(TINY, use_moe=True)
BRANCH = re.compile(r"layers\.(\d+)/mlp/experts\.(\d+)/if$")
GRAPHS = {"thinker": (thinker, thinker_spec), "talker": (talker, talker_spec)}


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    model = OmniTorchModel(CFG).eval()
    model.load_state_dict(random_state_dict(CFG, seed=4))
    out = tmp_path_factory.mktemp("moe")
    return model, {"thinker": thinker.export(model, out), "talker": talker.export(model, out)}


def branches(graph: onnx.GraphProto) -> dict[tuple[int, int], onnx.GraphProto]:
    """(layer, expert) -> the If's then branch."""
    return {(int(m.group(1)), int(m.group(2))): next(a.g for a in n.attribute if a.name == "then_branch")
            for n in graph.node if n.op_type == "If" and (m := BRANCH.search(n.name))}


def chosen_experts(model: OmniTorchModel, graph: str, feeds: dict) -> set[tuple[int, int]]:
    """(layer, expert) pairs the torch router picks for `feeds`, read from hooks on each layer's gate."""
    layers = model.model.layers if graph == "thinker" else model.talker.layers
    picked: set[tuple[int, int]] = set()
    hooks = [layer.mlp.gate.register_forward_hook(
        lambda _m, _i, out, i=i: picked.update((i, int(e)) for e in out.argmax(-1).flatten()))
        for i, layer in enumerate(layers)]
    try:
        GRAPHS[graph][0].reference_outputs(model, feeds)
    finally:
        for h in hooks:
            h.remove()
    return picked


@pytest.mark.parametrize("graph", GRAPHS)
def test_each_expert_is_one_branch(moe, graph):
    model, paths = moe
    g = onnx.load(paths[graph]).graph
    layers = CFG.num_hidden_layers if graph == "thinker" else CFG.num_talker_hidden_layers
    assert set(branches(g)) == {(i, e) for i in range(layers) for e in range(CFG.num_experts)}
    assert not [n.name for n in g.node if "/experts." in n.name and n.op_type == "MatMul"]


@pytest.mark.parametrize("graph", GRAPHS)
def test_decode_reads_only_the_chosen_experts(moe, graph, tmp_path):
    model, paths = moe
    module, spec = GRAPHS[graph]
    feeds = module.dummy_inputs(CFG, seq=1, past_seq=5, seed=1)
    picked = chosen_experts(model, graph, feeds)
    ref = module.reference_outputs(model, feeds)
    proto = onnx.load(paths[graph])
    poisoned = 0
    for key, branch in branches(proto.graph).items():
        if key in picked:
            continue
        for t in branch.initializer:
            w = numpy_helper.to_array(t)
            if w.dtype == np.float32 and w.size > 1:
                t.CopyFrom(numpy_helper.from_array(np.full_like(w, np.nan), t.name))
                poisoned += 1
    assert poisoned >= 2 * len(branches(proto.graph)) - 2 * len(picked) > 0
    got = run_onnx(proto, to_numpy(feeds))
    for name, want in ref.items():
        assert np.isfinite(got[name]).all(), name
        np.testing.assert_allclose(got[name], want.numpy(), atol=spec(CFG).atol, rtol=0, err_msg=name)


def test_int8_recipe_quantizes_the_branches(moe, tmp_path):
    model, paths = moe
    dst = quantize_graph(paths["thinker"], tmp_path / "thinker.onnx", INT8.for_graph("thinker"), thinker_spec(CFG),
                         SessionOptions())
    for key, branch in branches(onnx.load(dst).graph).items():
        weights = {numpy_helper.to_array(t).dtype for t in branch.initializer if numpy_helper.to_array(t).size > 1}
        assert np.dtype(np.int8) in weights and not [n for n in branch.node if n.op_type == "MatMul"], key
    feeds = to_numpy(thinker.dummy_inputs(CFG, seq=1, past_seq=5, seed=1))
    with torch.no_grad():
        ref = thinker.reference_outputs(model, thinker.dummy_inputs(CFG, seq=1, past_seq=5, seed=1))["logits"]
    got = run_onnx(dst, feeds)["logits"]
    cosine = float(np.sum(got * ref.numpy()) / np.linalg.norm(got) / np.linalg.norm(ref.numpy()))
    assert cosine > 0.99


def test_moe_bundle_greedy_equals_torch_reference(tmp_path):
    ckpt = write_random_pth(tmp_path / "sft_omni_768_moe.pth", CFG, seed=3)
    bundle = export_bundle(Sources(ckpt), tmp_path / "bundle")
    question = "Why is the sky blue?"
    dump = CodeDump([])
    list(Conversation(OmniModel.load(bundle)).respond(question, GenerationOptions(max_new_tokens=40, greedy=True),
                                                      decode_audio=False, record=dump))
    ref = reference_generate(load_model(ckpt), chat_prompt_ids([{"role": "user", "content": question}]), 40,
                             greedy=True)
    assert dump.prompt_ids == ref.prompt_ids and len(ref.text_ids) > 0
    assert dump.text_ids == ref.text_ids and dump.audio_codes == ref.audio_codes and dump.frames == ref.frames
