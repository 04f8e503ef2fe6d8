"""Quantization recipes as data: per graph, which pass and on which operators. The manifest records the recipe
each graph was built with, so a bundle says how it was made and `--report` can show why.

Choices (2-core Sapphire-Rapids-class VM, random full-size weights; re-measure on trained weights):
- Thinker and Talker MatMuls: 8-bit MatMulNBits weights in blocks of 128 inputs (asymmetric, int8 compute). A decode
  step is one-row MatMuls streaming their weights from DRAM; on a 2-core AMD EPYC (AVX-512 VNNI, 32 MB L3) onnxruntime
  1.32's one-row MatMulNBits kernel read 24 distinct [768, 4864] 8-bit matrices from DRAM at 20-40 GB/s where the
  dynamic int8 MatMul read its 7-bit per-channel ones at 12-25 GB/s: 0.9-2.6x as fast, faster in six of seven windows
  of one afternoon (the host's memory load moving both; `python -m omni_onnx.bench.profile --kernels`); one matrix in
  cache 1.5-1.9x as fast (blocks of 128 or 256, symmetric or not: within 5 % of each other; 32 and 64: slower). A
  prefill's matmuls are compute-bound, and there it is slower than the dynamic int8 MatMul (64 positions at once:
  ~1.4-1.6x). Activations are quantized per block, finer than the dynamic pass's one scale per call; AVX2 CPUs without
  VNNI split each weight byte pair so their int16 sums cannot saturate (MLAS' `accumulate_q8_*_avx2`, read in its
  source: no AVX2-only CPU here to run it); onnxruntime-web has no such kernel and dequantizes to fp32. Gemms (the
  Talker's projector MLPs, the Thinker's tied lm_head) are rewritten as MatMuls first (nbits.gemms_as_matmuls; the
  lm_head then holds its own 8-bit copy of the table, +4.9 MB on disk; resident, the Thinker grew by 6 MB and the
  Talker by 4 MB); MatMuls with fewer inputs than a block (the tiny test model's) stay dynamic int8. Side by side on
  the same weights (`benchmarks/results/decode-nbits-2026-12-07/`): step 0.86x, prefill of 64 positions 1.44x,
  teacher-forced text top-1 vs fp32 0.917 -> 0.958.
  (int4 leaves its Gemms to the dynamic int8 pass: in 4 bits they cut the Talker's logits cosine vs fp32 from
  0.9957 to 0.9884 and the teacher-forced text top-1 from 0.740 to 0.667.)
- Projectors, encoders: dynamic per-channel QInt8 weights on MatMul (QUInt8 was measured
  slower on this CPU, issue 5), in 7 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2 only, as many laptops)
  onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW, whose int16 pair sums saturate with
  8-bit weights (measured on a 2-core AMD EPYC with AVX2 only: tiny int8 Thinker logits cosine 0.981 vs fp32;
  with 7-bit weights the fidelity tests pass there as they do with VNNI). A bundle is made once and run anywhere.
  The decode step streams its weights, so int8 cuts its memory traffic by ~4x (full-size step 17.9 -> 5.6 ms; the
  Thinker and Talker used this pass until the MatMulNBits measurement above). Per-tensor scales were ~10% faster
  (5.1 ms) but cut the teacher-forced text top-1 from 1.000 to 0.948.
- Embedding tables (Gather only): int8 with per-row scales (gather_int8.py); the Thinker's is shared with its tied
  lm_head where that is a dynamic int8 MatMul (int4; a model under one block wide). Thinker 84.2 -> 64.5 MB, Talker
  65.4 -> 47.7 MB; teacher-forced top-1 over 96 steps vs fp32 tables:
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
MATMUL_NBITS = "matmul_nbits"  # blockwise MatMulNBits MatMul weights (nbits.py); what it leaves as DYNAMIC_INT8
FP16_WEIGHTS = "fp16_weights"  # fp32 compute, large weights stored fp16 (fp16_storage.py) and nothing quantized
KEEP = "keep"  # copied unchanged (fp32)
_PRECISION = {DYNAMIC_INT8: "int8", FP16_WEIGHTS: "fp32", KEEP: "fp32"}


@dataclass(frozen=True)
class GraphRecipe:
    method: str = DYNAMIC_INT8  # DYNAMIC_INT8, MATMUL_NBITS, FP16_WEIGHTS or KEEP
    op_types: tuple[str, ...] = ("MatMul",)  # operators whose constant weights are quantized
    per_channel: bool = True
    int8_tables: bool = True  # Gather-only lookup tables int8 with per-row scales (gather_int8.py)
    fp16_storage: bool = True  # remaining large fp32 weights stored fp16, computed fp32 (fp16_storage.py)
    bits: int = 4  # MATMUL_NBITS: bits per weight (4 or 8)
    block_size: int = 32  # MATMUL_NBITS: inputs per scale
    accuracy_level: int = 4  # MATMUL_NBITS: 4 = int8 compute
    symmetric: bool = False  # MATMUL_NBITS: no zero points
    gemms: bool = False  # MATMUL_NBITS: Gemms with constant weights too (nbits.gemms_as_matmuls)
    optimize_offline: bool = True  # save onnxruntime's (portable, "extended") graph optimizations into the file
    why: str = ""

    @property
    def precision(self) -> str:
        return f"int{self.bits}" if self.method == MATMUL_NBITS else _PRECISION[self.method]

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


_WEIGHTS = ("weight-streaming decode: 8-bit MatMulNBits weights (blocks of 128) cut the bytes each step reads ~4x; "
            "its one-row kernel reads them faster than the dynamic int8 MatMul's (step 0.86x side by side)")
_COMPUTE = "compute-bound encoder: int8 MatMul kernels (VNNI/AMX) and smaller weights"

INT8 = Recipe("int8", {
    "thinker": GraphRecipe(MATMUL_NBITS, bits=8, block_size=128, gemms=True, why=_WEIGHTS),
    "talker": GraphRecipe(MATMUL_NBITS, bits=8, block_size=128, gemms=True, why=_WEIGHTS),
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
INT4 = Recipe("int4", {**INT8.graphs, "thinker": GraphRecipe(MATMUL_NBITS, why=_INT4),
                       "talker": GraphRecipe(MATMUL_NBITS, why=_INT4)})

RECIPES = {r.name: r for r in (INT8, INT4)}
