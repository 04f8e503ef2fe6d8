"""Drive a static bundle (`omni-export --static`): the same `Stepper` protocol over fixed-shape graphs.

The static Thinker/Talker take the whole preallocated KV buffer [1, kv_heads, context, head_dim] plus `position`
(slots already filled) and new positions in fixed chunks (`length` of them real), and write the chunk's K/V into
the buffer themselves: each buffer is bound as both `past_*` and `present_*` (onnxruntime IO binding), so nothing
is copied and a call reads only the filled slots. `think` and `talk` split the new positions into chunks (the prefill graph
for several, the decode graph for one or for a tail whose padded chunk would run past the buffer), pads each chunk
to the graph's size and keeps only the real rows of `bridge` (the Thinker and the Talker are chunked separately: the
Talker may be behind). Greedy output equals the dynamic bundle's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .config import ModelConfig
from .contracts import PREFILL_SUFFIX, GraphSpec, talker_spec, thinker_spec
from .generate import ContextFull, ModelState, Speaker, Stepper
from .session import GraphSession


class BufferCache:
    """One stack's static KV cache: per layer K and V [1, kv_heads, capacity, head_dim], with the OrtValues that
    bind them to the graphs (created once: the arrays never move). `length` counts filled slots."""

    def __init__(self, n_layers: int, capacity: int, kv_heads: int, head_dim: int):
        shape = (1, kv_heads, capacity, head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        self.capacity, self.length = capacity, 0
        self.bound = {f"{kind}_{i}": ort.OrtValue.ortvalue_from_numpy(a)
                      for kind, arrays in (("key", self.keys), ("value", self.values)) for i, a in enumerate(arrays)}

    def append(self, outputs: dict[str, np.ndarray], t: int) -> None:
        """The graph already wrote the `t` new entries into the buffers."""
        self.length += t


def _seq_axes(tensors) -> dict[str, int]:
    """Tensor name -> axis of its per-position dim (`seq` in the dynamic contract), caches left out."""
    return {t.name: t.dims.index("seq") for t in tensors if "seq" in t.dims and not t.name.startswith("present_")}


class StaticStepper(Stepper):
    """`Stepper` for fixed-shape graphs. `prefill`: the `*_prefill` sessions by base name ("thinker", "talker"),
    empty when the bundle's prefill chunk is 1 (every position then goes through the decode graphs)."""

    def __init__(self, cfg: ModelConfig, thinker: GraphSession, talker: GraphSession, state: ModelState,
                 speaker: Speaker, prefill: dict[str, GraphSession]):
        super().__init__(cfg, thinker, talker, state, speaker)
        self._prefill = prefill
        dynamic = {s.graph: s for s in (thinker_spec(cfg), talker_spec(cfg))}
        self._in_axes = {g: _seq_axes(s.inputs) for g, s in dynamic.items()}
        self._out_axes = {g: _seq_axes(s.outputs) for g, s in dynamic.items()}
        self.chunk = self._size(prefill["thinker"].spec, "input_ids") if prefill else 1
        context = thinker.spec.inputs[-1].dims[2]
        if state.capacity != context or not isinstance(state.thinker, BufferCache):
            raise ValueError(f"this static bundle's graphs hold exactly {context} positions in BufferCache buffers; "
                             f"create the ModelState with capacity {context} and cache=BufferCache")

    def _size(self, spec: GraphSpec, name: str) -> int:
        """The fixed per-position size of input `name` in a static spec."""
        axis = self._in_axes[spec.graph.removesuffix(PREFILL_SUFFIX)][name]
        return next(t.dims[axis] for t in spec.inputs if t.name == name)

    def think(self, ids: np.ndarray, feature_embeds: np.ndarray | None = None,
              feature_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """As Stepper.think, one chunk at a time (the context check covers all positions before any is written)."""
        st = self.state
        if st.thinker.length + len(ids) > st.capacity:
            raise ContextFull(f"{st.thinker.length + len(ids)} positions exceed the context of {st.capacity}")
        out = {}
        for a, b in self._spans(st.thinker, len(ids)):
            feats = (None, None) if feature_embeds is None else (feature_embeds[:, a:b], feature_mask[:, a:b])
            out = super().think(ids[a:b], *feats)
        return out

    def talk(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """As Stepper.talk, one chunk at a time."""
        out = {}
        for a, b in self._spans(self.state.talker, codes.shape[1]):
            out = super().talk(codes[:, a:b])
        return out

    def _spans(self, cache: BufferCache, t: int):
        """(start, end) of each chunk of `t` new positions: a padded chunk must fit the buffer, so positions after
        the last whole chunk that fits go one by one (`cache.length` grows as each chunk is run)."""
        a = 0
        while a < t:
            b = min(a + (self.chunk if cache.length + self.chunk <= cache.capacity else 1), t)
            yield a, b
            a = b

    def _run_graph(self, session: GraphSession, cache: BufferCache, feeds: dict[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
        kind = session.spec.graph
        in_axes, out_axes = self._in_axes[kind], self._out_axes[kind]
        name, axis = next(iter(in_axes.items()))
        t = feeds[name].shape[axis]
        graph = self._prefill[kind] if t > 1 else session
        size = self._size(graph.spec, name)
        binding = graph.sess.io_binding()
        for k, v in feeds.items():
            binding.bind_cpu_input(k, _pad(v, in_axes[k], size) if k in in_axes else v)
        binding.bind_cpu_input("position", np.array([cache.length], np.int64))
        binding.bind_cpu_input("length", np.array([t], np.int64))
        own = [o.name for o in graph.spec.outputs if not o.name.startswith("present_")]
        for k in own:  # bound first: get_outputs() keeps the binding order
            binding.bind_output(k)
        for k, v in cache.bound.items():  # the graph writes the chunk's rows into the buffers it reads
            binding.bind_ortvalue_input("past_" + k, v)
            binding.bind_ortvalue_output("present_" + k, v)
        graph.sess.run_with_iobinding(binding)
        out = {k: v.numpy() for k, v in zip(own, binding.get_outputs())}
        return {k: (_head(v, out_axes[k], t) if k in out_axes else v) for k, v in out.items()}


def _head(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    """The first `n` entries along `axis` (a view)."""
    return x[(slice(None),) * axis + (slice(0, n),)]


def _pad(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Zero-pad `axis` to `size` (zeros are valid ids and codes, and switch features and the speaker off)."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths)
