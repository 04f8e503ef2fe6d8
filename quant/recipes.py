"""Quantization recipes as data: per graph, which pass and on which operators. The manifest records the recipe
each graph was built with, so a bundle says how it was made and `--report` can show why.

Choices (2-core Sapphire-Rapids-class VM, random full-size weights; re-measure on trained weights):
- Thinker, Talker, projectors, encoders: dynamic per-channel QInt8 weights on MatMul (QUInt8 was measured
  slower on this CPU, issue 5), in 7 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2 only, as many laptops)
  onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW, whose int16 pair sums saturate with
  8-bit weights (measured on a 2-core AMD EPYC with AVX2 only: tiny int8 Thinker logits cosine 0.981 vs fp32;
  with 7-bit weights the fidelity tests pass there as they do with VNNI). A bundle is made once and run anywhere.
  The decode step streams its weights, so int8 cuts its memory traffic by ~4x (full-size step 17.9 -> 5.6 ms).
  Per-tensor scales were ~10% faster (5.1 ms) but cut the teacher-forced text top-1 from 1.000 to 0.948.
- Embedding tables (Gather only): int8 with per-row scales (gather_int8.py); the Thinker's is shared with its tied
  lm_head. Thinker 84.2 -> 64.5 MB, Talker 65.4 -> 47.7 MB; teacher-forced top-1 over 96 steps vs fp32 tables:
  text 0.990 vs 1.000 (one step), codebooks 0.878 vs 0.876 (mean); no step-time change (a row is read per token).
  (Per-tensor int8 tables had cut the text top-1 to 0.969: one scale cannot fit every row's range.)
- Mimi decoder: int8 only on its transformer's MatMuls (the only MatMuls with constant weights); its convolutions
  and codebooks stay fp32 because they shape the waveform directly. Audio SNR vs fp32 over 50 random-code frames:
  transformer int8 57.3 dB (8.2 vs 11.9 ms/frame on a quiet machine); + int8 codebooks 40.9 dB (-12.5 MB);
  + int8 Conv (ConvInteger) 27.4 dB and 2.4x slower per frame (-14 MB). ConvTranspose has no int8 kernel; as Gemms
  (exported that way, parity 2e-5) per-channel int8 on any one transposed conv gives 38-39 dB, 8-bit MatMulNBits on
  all four 34-38 dB. fp32 convs as Gemms were not faster (their ~57 MB of weights bound the frame either way).
  What did pay is reading them once per call for several frames (contract v2; 2-core AVX2 EPYC, demo weights: 4
  frames per call 5.44 ms per frame against 10.60 ms one per call; SNR vs fp32 53.4 dB either way).
- Vision: exported with onnxruntime's fused Attention (quantized to QAttention here) and FastGelu (siglip.py).
  Not taken there: static QDQ / QOperator int8 (4x / 1.8x slower than dynamic), MatMulNBits 8-bit (6x slower on
  its matmuls), MultiHeadAttention (slower than the decomposed attention).
- CAM++: no MatMul; its convolutions compute in fp32 from fp16-stored weights (FP16_WEIGHTS).
- Large fp32 weights left after that (Mimi's convolutions and codebooks, SigLIP's patch embedding, SenseVoice's
  FSMN convolutions, MatMulNBits scales) are stored fp16 and cast back when the session loads (fp16_storage.py):
  Mimi 102.3 -> 64.1 MB at 57.3 -> 56.1 dB SNR, same load time and frame time.
- int4 (MatMulNBits, block 32, accuracy level 4) for the Thinker and Talker MatMuls: 64.5 -> 43.0 and 47.7 -> 32.6 MB
  (bundle 552 -> 516 MB); on random Gaussian weights it cuts the teacher-forced top-1 to text 0.74, codebooks ~0.38
  (int8: 0.99, ~0.88), which says little about trained weights: run `--report` on them before choosing it.
- Not taken: SenseVoice int4 (-86 MB, but projected-feature cosine 0.977, CTC argmax agreement 0.51 and ~4x slower
  than int8 at 6 s); onnxruntime.transformers' SkipSimplifiedLayerNormalization fusion on the Thinker (582 -> 567
  nodes, no measurable step change); conv int8 for Mimi (above).
- Size: the graphs hold ~479 M parameters the runtime uses (SenseVoice 234 M, SigLIP 88 M, Thinker 64 M, Talker
  47 M, Mimi decoder 44 M), so any all-int8 bundle is over 450 MB; int8 here: 596 MB with the voice-cloning graphs
  (Mimi encoder 68 MB, CAM++ 19 MB, loaded only to clone a voice), 509 MB without.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from omni_onnx.contracts import PREFILL_SUFFIX

DYNAMIC_INT8 = "dynamic_int8"
INT4_MATMUL = "int4_matmul"  # MatMulNBits 4-bit MatMul weights (int4.py); Gemm and the rest as DYNAMIC_INT8
FP16_WEIGHTS = "fp16_weights"  # fp32 compute, large weights stored fp16 (fp16_storage.py) and nothing quantized
KEEP = "keep"  # copied unchanged (fp32)
_PRECISION = {DYNAMIC_INT8: "int8", INT4_MATMUL: "int4", FP16_WEIGHTS: "fp32", KEEP: "fp32"}


@dataclass(frozen=True)
class GraphRecipe:
    method: str = DYNAMIC_INT8  # DYNAMIC_INT8, INT4_MATMUL, FP16_WEIGHTS or KEEP
    op_types: tuple[str, ...] = ("MatMul",)  # operators whose constant weights are quantized
    per_channel: bool = True
    int8_tables: bool = True  # Gather-only lookup tables int8 with per-row scales (gather_int8.py)
    fp16_storage: bool = True  # remaining large fp32 weights stored fp16, computed fp32 (fp16_storage.py)
    block_size: int = 32  # INT4_MATMUL: inputs per scale
    accuracy_level: int = 4  # INT4_MATMUL: 4 = int8 compute
    optimize_offline: bool = True  # save onnxruntime's (portable, "extended") graph optimizations into the file
    why: str = ""

    @property
    def precision(self) -> str:
        return _PRECISION[self.method]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "op_types": list(self.op_types)}


@dataclass(frozen=True)
class Recipe:
    name: str
    graphs: dict[str, GraphRecipe] = field(default_factory=dict)

    def for_graph(self, graph: str) -> GraphRecipe:
        """A static bundle's `<graph>_prefill` takes its graph's recipe; graphs a recipe does not name are copied
        unchanged."""
        base = graph.removesuffix(PREFILL_SUFFIX)
        return self.graphs.get(base, GraphRecipe(KEEP, why=f"not covered by the {self.name} recipe"))


_WEIGHTS = "weight-streaming decode: int8 weights cut the bytes each step reads ~4x"
_COMPUTE = "compute-bound encoder: int8 MatMul kernels (VNNI/AMX) and smaller weights"

INT8 = Recipe("int8", {
    "thinker": GraphRecipe(why=_WEIGHTS),
    "talker": GraphRecipe(why=_WEIGHTS),
    "audio_projector": GraphRecipe(why=_COMPUTE),
    "vision": GraphRecipe(op_types=("MatMul", "Attention"),
                          why=_COMPUTE + "; the exported fused Attention becomes QAttention (int8 QKV projection)"),
    "sensevoice": GraphRecipe(why=_COMPUTE),
    "mimi_decoder": GraphRecipe(int8_tables=False,
                                why="transformer MatMuls only (convolutions and codebooks compute in fp32, stored "
                                    "fp16: they shape the waveform); see the report's audio SNR"),
    "mimi_encoder": GraphRecipe(int8_tables=False,
                                why="as the decoder: transformer MatMuls int8, convolutions fp32 stored fp16 (186 -> "
                                    "68 MB; codes of a 3.2 s clip vs fp32: codebooks 0, 1, 7 identical, 2-6 97.5 %)"),
    "campplus": GraphRecipe(FP16_WEIGHTS, int8_tables=False,
                            why="convolutions only (no MatMul to quantize): fp32 compute, weights stored fp16 (28.1 -> "
                                "18.8 MB; embedding of 3 s of features vs fp32: cosine 0.9999999)"),
})

_INT4 = "decode steps stream every weight: 4-bit blocks read ~1.8x fewer bytes than int8"
INT4 = Recipe("int4", {**INT8.graphs, "thinker": GraphRecipe(INT4_MATMUL, why=_INT4),
                       "talker": GraphRecipe(INT4_MATMUL, why=_INT4)})

RECIPES = {r.name: r for r in (INT8, INT4)}
