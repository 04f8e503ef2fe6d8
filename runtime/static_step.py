"""Drive a static bundle (`omni-export --static`): the same `Stepper` protocol over fixed-shape graphs.

The static Thinker/Talker read the whole preallocated KV buffer plus `position` (slots already filled) and take
new positions in fixed chunks (`length` of them real). So `run` splits the new positions into chunks (the prefill
graph for several, the decode graph for one), pads each chunk to the graph's size and keeps only the real rows of
the per-position outputs; the caches are written in place as with the dynamic graphs. Greedy output equals the
dynamic bundle's.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .contracts import PREFILL_SUFFIX, GraphSpec, talker_spec, thinker_spec
from .generate import ContextFull, KVCache, ModelState, Speaker, Stepper
from .session import GraphSession


def _seq_axes(tensors) -> dict[str, int]:
    """Tensor name -> axis of its per-position dim (`seq` in the dynamic contract)."""
    return {t.name: t.dims.index("seq") for t in tensors if "seq" in t.dims}


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
        context = thinker.spec.inputs[-1].dims[1]
        if state.capacity != context:
            raise ValueError(f"this static bundle's graphs hold exactly {context} positions, the state holds "
                             f"{state.capacity}; create the ModelState with capacity {context}")

    def _size(self, spec: GraphSpec, name: str) -> int:
        """The fixed per-position size of input `name` in a static spec."""
        axis = self._in_axes[spec.graph.removesuffix(PREFILL_SUFFIX)][name]
        return next(t.dims[axis] for t in spec.inputs if t.name == name)

    def run(self, ids: np.ndarray, codes: np.ndarray, feature_embeds: np.ndarray | None = None,
            feature_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As Stepper.run, one chunk at a time (the context check covers all positions before any is written)."""
        st, t = self.state, len(ids)
        if st.length + t > st.capacity:
            raise ContextFull(f"{st.length + t} positions exceed the context of {st.capacity}")
        for a in range(0, t, self.chunk):
            b = min(a + self.chunk, t)
            feats = (None, None) if feature_embeds is None else (feature_embeds[:, a:b], feature_mask[:, a:b])
            logits = super().run(ids[a:b], codes[:, a:b], *feats)
        return logits

    def _run_graph(self, session: GraphSession, cache: KVCache, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kind = session.spec.graph
        in_axes, out_axes = self._in_axes[kind], self._out_axes[kind]
        name, axis = next(iter(in_axes.items()))
        t = feeds[name].shape[axis]
        graph = self._prefill[kind] if t > 1 else session
        size = self._size(graph.spec, name)
        padded = {k: (_pad(v, in_axes[k], size) if k in in_axes else v) for k, v in feeds.items()}
        past = {f"past_key_{i}": k for i, k in enumerate(cache.keys)}
        past.update((f"past_value_{i}", v) for i, v in enumerate(cache.values))
        out = graph.run({**padded, "position": np.array([cache.length], np.int64), "length": np.array([t], np.int64),
                         **past})
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
