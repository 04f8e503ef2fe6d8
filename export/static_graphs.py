"""Fixed-shape Thinker and Talker graphs (`omni-export --static`): no symbolic dimension anywhere in the graph.

NPU and mobile runtimes compile one set of shapes, so instead of a cache that grows per call these graphs take

    past_key/value_<i>  the whole [1, context, kv_heads, head_dim] buffer; slots >= `position` are masked out
    position            slots already filled = absolute position of the chunk's first entry
    length              real entries in the fixed-size chunk (the rest is padding)

and return, as the dynamic graphs, only the chunk's K/V (the caller writes the first `length` rows at `position`:
no graph copies the buffer). Real positions attend to valid slots and to earlier chunk positions only, so neither
stale slots nor padding can reach them; logits come from chunk position `length - 1`.

The wrappers reuse `OmniTorchModel`'s submodules, weights and `run_blocks`; only the stack context differs (RoPE
from `position`, the buffer's unfilled slots masked).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omni_onnx.contracts import PREFILL_SUFFIX, GraphSpec, StaticShape, TensorSpec, talker_spec, thinker_spec

from . import talker as dynamic_talker
from . import thinker as dynamic_thinker
from .common import ParityError, export_graph, flatten_kv, kv_pairs, run_onnx, verify_parity
from .modeling import OmniTorchModel, StackContext, causal_mask, rope_cos_sin, run_blocks


def _buffer_context(inv_freq: Tensor, position: Tensor, chunk: int, capacity: int, layers: nn.ModuleList
                    ) -> StackContext:
    """RoPE at `position + arange(chunk)` (no shape depends on a value), causal among the chunk, and every buffer
    slot at or after `position` hidden, so neither stale slots nor padding reach a real position."""
    cos, sin = rope_cos_sin(inv_freq, position, chunk)
    attn = layers[0].self_attn
    return StackContext(cos, sin, causal_mask(chunk, attn.heads // attn.kv_heads, inv_freq.device), capacity,
                        torch.arange(capacity, device=inv_freq.device) >= position)


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
        past_kv = kv_pairs(past)
        ctx = _buffer_context(m.model.inv_freq, position, h.shape[1], past_kv[0][0].shape[1], m.model.layers)
        h, bridge, new = run_blocks(m.model.layers, h, m.model.inv_freq, past_kv, m.cfg.bridge_layer, ctx)
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
        past_kv = kv_pairs(past)
        ctx = _buffer_context(t.inv_freq, position, x.shape[1], past_kv[0][0].shape[1], t.layers)
        h, _, new = run_blocks(t.layers, x, t.inv_freq, past_kv, ctx=ctx)
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
    return dims["input_ids"][1] if "input_ids" in dims else dims["codes"][2], dims["past_key_0"][1]


def _cut(dynamic: tuple[TensorSpec, ...], arrays: dict, sizes: dict[str, int]) -> dict:
    """Each array cut to its dynamic contract's symbolic dims (`sizes`: seq, past_seq)."""
    return {t.name: arrays[t.name][tuple(slice(0, sizes[d]) if isinstance(d, str) else slice(None) for d in t.dims)]
            for t in dynamic if t.name in arrays}


def example_inputs(model: OmniTorchModel, spec: GraphSpec, position: int, length: int,
                   seed: int = 0) -> dict[str, Tensor]:
    """The dynamic graph's random inputs at chunk size, and a random whole buffer: the masked slots and the
    padding hold values that would change the outputs if they leaked."""
    chunk, context = _sizes(spec)
    feeds = _GRAPHS[_kind(spec)].dynamic.dummy_inputs(model.cfg, seq=chunk, past_seq=context, seed=seed)
    return {**feeds, "position": torch.tensor([position]), "length": torch.tensor([length])}


def verify(model: OmniTorchModel, path: Path, spec: GraphSpec) -> dict[str, dict[str, float]]:
    """Parity against the dynamic graph's torch reference run on the real part only (cache[:position],
    chunk[:length]) over several (position, length); raises one ParityError listing every failing case."""
    kind, (chunk, context) = _kind(spec), _sizes(spec)
    dynamic = _GRAPHS[kind].dynamic_spec(model.cfg)
    cases = sorted({(0, chunk), (0, max(1, chunk // 2)), (3, chunk), (context - chunk, chunk), (context - 1, 1)})
    results, failures = {}, []
    for n, (position, length) in enumerate(cases):
        feeds = example_inputs(model, spec, position, length, seed=100 + n)
        ref = _GRAPHS[kind].dynamic.reference_outputs(model, _cut(dynamic.inputs, feeds, {"seq": length,
                                                                                     "past_seq": position}))
        got = _cut(dynamic.outputs, run_onnx(path, {k: v.numpy() for k, v in feeds.items()}), {"seq": length})
        label = f"position={position} length={length}"
        try:
            results[label] = verify_parity(spec, ref, got, label=label)
        except ParityError as e:
            failures.append(str(e))
    if failures:
        raise ParityError("\n".join(failures))
    return results


def symbolic_dims(path: str | Path) -> list[str]:
    """Every graph input, output and intermediate (after shape inference) whose shape is not fully fixed."""
    model = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(path)))
    g = model.graph
    bad = []
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
