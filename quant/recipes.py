"""Quantization recipes as data: per graph, which pass and on which operators. The manifest records the recipe
each graph was built with, so a bundle says how it was made and `--report` can show why.

Choices (2-core Sapphire-Rapids-class VM, random full-size weights; re-measure on trained weights):
- Thinker, Talker, projectors, encoders: dynamic per-channel QInt8 weights on MatMul (QUInt8 was measured
  slower on this CPU, issue 5).
  The decode step streams its weights, so int8 cuts its memory traffic by ~4x (full-size step 17.9 -> 5.6 ms).
  Per-tensor scales were ~10% faster (5.1 ms) but cut the teacher-forced text top-1 from 1.000 to 0.948.
  Embedding tables (Gather) stay fp32: int8 (per-tensor) ones saved 32 MB but cut the teacher-forced top-1
  agreement (text 1.000 -> 0.969, codebooks ~0.87 -> ~0.85 over 96 steps), for no speed (a row is read per token).
- Mimi decoder: int8 only on its transformer's MatMuls (the only MatMuls with constant weights); its convolutions
  stay fp32 because they shape the waveform directly (transformer-only int8: 8.2 vs 11.9 ms/frame, 57.6 dB SNR).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DYNAMIC_INT8 = "dynamic_int8"
KEEP = "keep"  # copied unchanged (fp32)


@dataclass(frozen=True)
class GraphRecipe:
    method: str = DYNAMIC_INT8  # DYNAMIC_INT8 or KEEP
    op_types: tuple[str, ...] = ("MatMul",)  # operators whose constant weights are quantized
    per_channel: bool = True
    optimize_offline: bool = True  # save onnxruntime's (portable, "extended") graph optimizations into the file
    why: str = ""

    @property
    def precision(self) -> str:
        return "int8" if self.method == DYNAMIC_INT8 else "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "op_types": list(self.op_types)}


@dataclass(frozen=True)
class Recipe:
    name: str
    graphs: dict[str, GraphRecipe] = field(default_factory=dict)

    def for_graph(self, graph: str) -> GraphRecipe:
        """Graphs a recipe does not name are copied unchanged."""
        return self.graphs.get(graph, GraphRecipe(KEEP, why=f"not covered by the {self.name} recipe"))


_WEIGHTS = "weight-streaming decode: int8 weights cut the bytes each step reads ~4x"
_COMPUTE = "compute-bound encoder: int8 MatMul kernels (VNNI/AMX) and smaller weights"

INT8 = Recipe("int8", {
    "thinker": GraphRecipe(why=_WEIGHTS),
    "talker": GraphRecipe(why=_WEIGHTS),
    "audio_projector": GraphRecipe(why=_COMPUTE),
    "vision": GraphRecipe(why=_COMPUTE),
    "sensevoice": GraphRecipe(why=_COMPUTE),
    "mimi_decoder": GraphRecipe(why="transformer MatMuls only (convolutions stay fp32: they shape the waveform); "
                                    "see the report's audio SNR"),
})

RECIPES = {r.name: r for r in (INT8,)}
