"""Fixed-shape Thinker and Talker graphs (`omni-export --static`): no symbolic dimension anywhere in the graph.

NPU and mobile runtimes compile one set of shapes, so instead of a cache that grows per call these graphs take

    past_key/value_<i>  the whole [1, kv_heads, context, head_dim] buffer, returned as present_key/value_<i> with
                        the chunk's rows written at `position` (bound to the same memory, nothing is copied)
    position            slots already filled = absolute position of the chunk's first entry
    length              real entries in the fixed-size chunk (the rest is padding)

The attention is onnxruntime's GroupQueryAttention (com.microsoft), whose sequence length is a value
(`seqlens_k`, `total_sequence_length`, both computed from `position`), not a shape: it reads slots < position +
chunk only, so a step costs what the dynamic graph's costs at the same context. Version 1 masked a full-buffer
attention (no contrib op, but every step read all `context` slots: 1.6x the dynamic step at context 64).
Real positions attend to earlier slots and earlier chunk rows only, so neither stale slots nor padding can reach
them; logits come from chunk position `length - 1`.

The wrappers reuse `OmniTorchModel`'s submodules and weights; only the attention's cache handling differs from
`modeling.Block` (RoPE from `position`, the cache in the buffer).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omni_onnx.contracts import PREFILL_SUFFIX, GraphSpec, StaticShape, TensorSpec, talker_spec, thinker_spec
from omni_onnx.errors import OmniError

from . import talker as dynamic_talker
from . import thinker as dynamic_thinker
from .common import ParityError, export_graph, flatten_kv, kv_pairs, run_onnx, verify_parity
from .modeling import Attention, OmniTorchModel, apply_rope, rope_cos_sin, shared_input_linears


class GroupQueryAttention(torch.autograd.Function):
    """Exported as com.microsoft GroupQueryAttention on a [1, kv_heads, context, head_dim] buffer (softmax scale
    1/sqrt(head_dim), query head j reads kv head j // (heads / kv_heads), as `modeling.Attention`). `forward` is the
    same maths in torch, which the tracer only needs for the outputs' shapes."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, past_k: Tensor, past_v: Tensor, seqlens: Tensor,
                total: Tensor, heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
        seq, d = q.shape[1], past_k.shape[-1]
        start = int(total) - seq
        buffers = []
        for past, new in ((past_k, k), (past_v, v)):
            b = past.clone()
            b[0, :, start:start + seq] = new.view(seq, kv_heads, d).transpose(0, 1)
            buffers.append(b)
        keys, values = (b[0, :, :start + seq].repeat_interleave(heads // kv_heads, 0) for b in buffers)
        scores = q.view(seq, heads, d).transpose(0, 1) @ keys.transpose(1, 2) / math.sqrt(d)
        visible = torch.arange(start + seq)[None, :] <= start + torch.arange(seq)[:, None]
        probs = F.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        return (probs @ values).transpose(0, 1).reshape(1, seq, heads * d), *buffers

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens, total, heads: int, kv_heads: int):
        out, pk, pv = g.op("com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens, total,
                           num_heads_i=heads, kv_num_heads_i=kv_heads, outputs=3)
        for value, like in ((out, q), (pk, past_k), (pv, past_v)):
            value.setType(like.type())  # the shapes onnx's shape inference cannot derive for a contrib op
        return out, pk, pv


def _attend(attn: Attention, x: Tensor, cos: Tensor, sin: Tensor, buffers: tuple[Tensor, Tensor],
            seqlens: Tensor, total: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """`modeling.Attention` (same projections, norms and RoPE) with the cache in the buffers."""
    seq, d = x.shape[1], attn.head_dim
    q, k, v = shared_input_linears(x, [attn.q_proj, attn.k_proj, attn.v_proj])
    qk = torch.cat([attn.q_norm(q.view(-1, attn.heads, d)), attn.k_norm(k.view(-1, attn.kv_heads, d))], dim=1)
    qk = apply_rope(qk, cos, sin)
    q, k = qk[:, :attn.heads].reshape(1, seq, -1), qk[:, attn.heads:].reshape(1, seq, -1)
    out, pk, pv = GroupQueryAttention.apply(q, k, v, *buffers, seqlens, total, attn.heads, attn.kv_heads)
    return attn.o_proj(out), (pk, pv)


def run_buffer_blocks(layers: nn.ModuleList, x: Tensor, inv_freq: Tensor, buffers: list[tuple[Tensor, Tensor]],
                      position: Tensor, tap: int = -1) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """`modeling.run_blocks` for a chunk at `position` over whole cache buffers: (output, output of layer `tap`,
    the updated buffers)."""
    seq = x.shape[1]
    cos, sin = rope_cos_sin(inv_freq, position, seq)
    seqlens = (position + (seq - 1)).to(torch.int32)  # GroupQueryAttention: last valid slot, and slots in all
    total = (position + seq).to(torch.int32).reshape(())
    tapped, new = x, []
    for i, layer in enumerate(layers):
        a, kv = _attend(layer.self_attn, layer.input_layernorm(x), cos, sin, buffers[i], seqlens, total)
        h = x + a
        x = h + layer.mlp(layer.post_attention_layernorm(h))
        new.append(kv)
        if i == tap:
            tapped = x
    return x, tapped, new


def _last(h: Tensor, length: Tensor) -> Tensor:
    """Row `length - 1` of h [1, chunk, dim] -> [1, 1, dim] (a Gather: the shape does not depend on `length`)."""
    return h.index_select(1, length - 1)


class StaticThinkerGraph(nn.Module):
    """Inputs and outputs in the order of the static thinker spec."""

    def __init__(self, model: OmniTorchModel):
        super().__init__()
        self.model = model
        self.register_buffer("zero_bias", torch.zeros(model.cfg.vocab_size), persistent=False)  # see ThinkerGraph

    def forward(self, input_ids: Tensor, feature_embeds: Tensor, feature_mask: Tensor, position: Tensor,
                length: Tensor, *past: Tensor) -> tuple:
        m = self.model
        h = torch.where(feature_mask[..., None], feature_embeds, m.model.embed_tokens(input_ids))
        h, bridge, new = run_buffer_blocks(m.model.layers, h, m.model.inv_freq, kv_pairs(past), position,
                                           m.cfg.bridge_layer)
        logits = F.linear(m.model.norm(_last(h, length))[:, 0], m.lm_head.weight, self.zero_bias)
        return (logits, bridge, *flatten_kv(new))


class StaticTalkerGraph(nn.Module):
    """Inputs and outputs in the order of the static talker spec."""

    def __init__(self, model: OmniTorchModel):
        super().__init__()
        self.model = model

    def forward(self, bridge: Tensor, codes: Tensor, spk_mask: Tensor, spk_emb: Tensor, position: Tensor,
                length: Tensor, *past: Tensor) -> tuple:
        t = self.model.talker
        e = torch.where(spk_mask[..., None], t.spk_proj(spk_emb)[:, None, :], t.embed_tokens(codes))
        x = t.embed_proj(bridge) * t.text_scale + t.codec_proj(e) * t.audio_scale
        h, _, new = run_buffer_blocks(t.layers, x, t.inv_freq, kv_pairs(past), position)
        return (self.model.talker_logits(_last(h, length))[:, :, 0], *flatten_kv(new))


class _Kind(NamedTuple):
    wrapper: type[nn.Module]
    dynamic: ModuleType  # the dynamic graph's exporter: its dummy_inputs and torch reference_outputs
    dynamic_spec: Callable[..., GraphSpec]


_GRAPHS = {"thinker": _Kind(StaticThinkerGraph, dynamic_thinker, thinker_spec),
           "talker": _Kind(StaticTalkerGraph, dynamic_talker, talker_spec)}


def _kind(spec: GraphSpec) -> str:
    return spec.graph.removesuffix(PREFILL_SUFFIX)


def _sizes(spec: GraphSpec) -> tuple[int, int]:
    """(chunk, context) of a static spec."""
    dims = {t.name: t.dims for t in spec.inputs}
    return dims["input_ids"][1] if "input_ids" in dims else dims["codes"][2], dims["past_key_0"][2]


def _cut(dynamic: tuple[TensorSpec, ...], arrays: dict, sizes: dict[str, int]) -> dict:
    """Each array cut to its dynamic contract's symbolic dims (`sizes`: seq, past_seq)."""
    return {t.name: arrays[t.name][tuple(slice(0, sizes[d]) if isinstance(d, str) else slice(None) for d in t.dims)]
            for t in dynamic if t.name in arrays}


def _heads_first(feeds: dict) -> dict:
    """Cache tensors between the dynamic layout [1, positions, kv_heads, head_dim] and the buffer's
    [1, kv_heads, positions, head_dim] (either way), contiguous."""
    return {k: (v.transpose(1, 2).contiguous() if k.startswith(("past_", "present_")) else v)
            for k, v in feeds.items()}


def example_inputs(model: OmniTorchModel, spec: GraphSpec, position: int, length: int,
                   seed: int = 0) -> dict[str, Tensor]:
    """The dynamic graph's random inputs at chunk size, and random whole buffers: the slots at and after
    `position` and the padding hold values that would change the outputs if they leaked."""
    chunk, context = _sizes(spec)
    feeds = _GRAPHS[_kind(spec)].dynamic.dummy_inputs(model.cfg, seq=chunk, past_seq=context, seed=seed)
    return {**_heads_first(feeds), "position": torch.tensor([position]), "length": torch.tensor([length])}


def verify(model: OmniTorchModel, path: Path, spec: GraphSpec) -> dict[str, dict[str, float]]:
    """Parity against the dynamic graph's torch reference run on the real part only (cache[:position],
    chunk[:length]) over several (position, length), and the buffers' filled slots (< position) unchanged; raises
    one ParityError listing every failing case."""
    kind, (chunk, context) = _kind(spec), _sizes(spec)
    dynamic = _GRAPHS[kind].dynamic_spec(model.cfg)
    # a chunk's rows (padding included) must fit the buffer: the runtime sends a tail chunk that would not through
    # the decode graph
    cases = sorted({(0, chunk), (0, max(1, chunk // 2)), (3, chunk), (context - chunk, chunk), (context - chunk, 1)})
    results, failures = {}, []
    for n, (position, length) in enumerate(cases):
        feeds = example_inputs(model, spec, position, length, seed=100 + n)
        ref = _GRAPHS[kind].dynamic.reference_outputs(
            model, _cut(dynamic.inputs, _heads_first(feeds), {"seq": length, "past_seq": position}))
        out = run_onnx(path, {k: v.numpy() for k, v in feeds.items()})
        label = f"position={position} length={length}"
        kept = [k for k in out if k.startswith("present_") and not np.array_equal(
            out[k][:, :, :position], feeds["past_" + k[8:]][:, :, :position].numpy())]
        if kept:
            failures.append(f"{label}: {kept} changed slots before the chunk")
        written = {k: torch.from_numpy(v[:, :, position:position + length]) for k, v in out.items()
                   if k.startswith("present_")}
        got = _cut(dynamic.outputs, {**out, **{k: v.numpy() for k, v in _heads_first(written).items()}},
                   {"seq": length})
        try:
            results[label] = verify_parity(spec, ref, got, label=label)
        except ParityError as e:
            failures.append(str(e))
    if failures:
        raise ParityError("\n".join(failures))
    return results


def symbolic_dims(path: str | Path) -> list[str]:
    """Every graph input, output and intermediate (after shape inference) whose shape is not fully fixed or not
    known (an op onnx cannot infer, unless the exporter stamped its output shapes)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(path)))
    g = model.graph
    known = {v.name for v in list(g.input) + list(g.output) + list(g.value_info)}
    bad = [f"{name}: no inferred shape" for n in g.node for name in n.output if name and name not in known]
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if not v.type.HasField("tensor_type"):
            continue
        t = v.type.tensor_type
        if not t.HasField("shape"):
            bad.append(f"{v.name}: unknown rank")
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        if any(isinstance(d, str) for d in dims):
            bad.append(f"{v.name}: {dims}")
    return bad


def fold_shapes(path: Path) -> None:
    """Fold the graph's shape computations (Shape -> Gather -> Concat -> Reshape chains the tracer emits) into
    constants in place, with onnxruntime's "basic" offline optimization: with every input shape fixed they are
    constants, and that level only folds and removes nodes (standard ONNX ops stay standard). This is what makes a
    static graph static when onnxsim's result was refused or onnxsim failed (measured on the large-logit Talker:
    529 -> 292 nodes, 266 -> 0 symbolic intermediates)."""
    import onnxruntime as ort

    from omni_onnx.session import SessionOptions, ort_session_options

    folded = path.with_suffix(".folded.onnx")
    try:
        so = ort_session_options(SessionOptions())  # this process's shared thread pool, as every session here
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = os.fspath(folded)
        ort.InferenceSession(os.fspath(path), sess_options=so, providers=["CPUExecutionProvider"])
        os.replace(folded, path)
    finally:
        folded.unlink(missing_ok=True)


def export_static(model: OmniTorchModel, shape: StaticShape, out_dir: Path, check: bool
                  ) -> dict[str, tuple[Path, GraphSpec]]:
    """Write every static Thinker/Talker graph (decode, and prefill when the chunk is > 1) into `out_dir`; with
    `check`, verify each against torch."""
    if model.cfg.use_moe:  # moe_branches.py rewrites the dynamic graphs' traced experts only
        raise OmniError("a MoE checkpoint has no static form yet (its experts are exported for the dynamic graphs): "
                        "export it without --static")
    written = {}
    for name, spec in shape.specs(model.cfg).items():
        chunk, _ = _sizes(spec)
        feeds = example_inputs(model, spec, position=3, length=max(1, chunk - 1))
        path = export_graph(_GRAPHS[_kind(spec)].wrapper(model), feeds, spec, out_dir / f"{name}.onnx")
        if symbolic_dims(path):  # onnxsim's result was not taken: the plain export computes its shapes
            fold_shapes(path)
        loose = symbolic_dims(path)
        if loose:
            raise ValueError(f"static {name} graph kept symbolic shapes ({len(loose)}, e.g. {loose[:3]}); "
                             f"this is an exporter bug: report it")
        if check:
            verify(model, path, spec)
        written[name] = (path, spec)
    return written
