"""Quantization passes over exported bundles (`omni-quant BUNDLE --to int8|int4 [--out B2] [--report]`,
`omni-export --precision int8|int4`).

recipes.py: per graph, which pass on which operators (data, recorded in the new manifest);
dynamic_int8.py: one graph -> its quantized copy, contract kept, onnxruntime's portable optimizations saved;
int4.py: 4-bit MatMulNBits weights (Thinker/Talker in the int4 recipe); gather_int8.py: int8 lookup tables;
fp16_storage.py: the remaining large fp32 weights stored as fp16 on disk;
fidelity.py: the quantized bundle vs its fp32 source (per-graph outputs, teacher-forced and greedy top-1
agreement, Mimi audio SNR); cli.py: writes the new bundle and the JSON + Markdown report.
"""
