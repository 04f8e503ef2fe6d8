"""int8 passes over exported bundles (`omni-quant BUNDLE --to int8 [--out B2] [--report]`).

recipes.py: per graph, which pass on which operators (data, recorded in the new manifest);
dynamic_int8.py: one graph -> its dynamic-int8 copy, contract kept, onnxruntime's portable optimizations saved;
fidelity.py: the quantized bundle vs its fp32 source (per-graph outputs, teacher-forced and greedy top-1
agreement, Mimi audio SNR); cli.py: writes the new bundle and the JSON + Markdown report.
Still to come (issue 5): int4 MatMulNBits for Thinker/Talker, fused decode-step operators.
"""
