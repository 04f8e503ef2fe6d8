"""How much of a decode step its weight matmuls are: each Thinker/Talker graph of BUNDLE is timed whole (as the
runtime feeds it at context 64) and as a graph holding only its weight matmuls (same nodes, same weights, each fed
a random row), in the same rounds of one process; the Thinker+Talker step (`Stepper.run`) beside them.

    python matmuls_alone.py BUNDLE [--rounds 5]
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from omni_onnx.bench.latency import timed_ms
from omni_onnx.model import Conversation, OmniModel
from omni_onnx.session import DISABLED_OPTIMIZERS, SessionOptions, ort_session_options

WEIGHT_MATMULS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "MatMul", "Gemm"}
CONTEXT = 64


def matmuls_only(src: Path, dst: Path) -> None:
    """`src`'s top-level weight matmuls (every input but the first constant) in a graph of their own."""
    m = onnx.load(src)
    inits = {i.name: i for i in m.graph.initializer}
    nodes, inputs, outputs, used = [], {}, [], set()
    for nd in m.graph.node:
        if nd.op_type not in WEIGHT_MATMULS or not all(not x or x in inits for x in nd.input[1:]):
            continue
        w, a = inits[nd.input[1]], {x.name: helper.get_attribute_value(x) for x in nd.attribute}
        k = a["K"] if nd.op_type == "MatMulNBits" else (w.dims[1] if a.get("transB") else w.dims[0])
        inputs[f"x{k}"] = helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k])
        node = helper.make_node(nd.op_type, [f"x{k}", *nd.input[1:]], [nd.output[0]], domain=nd.domain, name=nd.name)
        node.attribute.extend(nd.attribute)
        nodes.append(node)
        outputs.append(helper.make_tensor_value_info(nd.output[0], TensorProto.FLOAT, None))
        used.update(nd.input[1:])
    graph = helper.make_graph(nodes, "matmuls", list(inputs.values()), outputs, [inits[n] for n in used if n in inits])
    model = helper.make_model(graph, opset_imports=m.opset_import)
    model.ir_version = m.ir_version
    onnx.save(model, dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    opts = SessionOptions(threads=2)
    model = OmniModel.load(a.bundle, opts)
    conv = Conversation(model, context=CONTEXT + 8)
    st, stepper, cfg = conv.state, conv.stepper, model.config
    rng = np.random.default_rng(0)
    ids, codes = rng.integers(100, cfg.vocab_size, CONTEXT + 1), rng.integers(0, 2048, (8, CONTEXT + 1))
    stepper.run(ids[:CONTEXT], codes[:, :CONTEXT])
    st.truncate(CONTEXT)
    thinker_feeds = {"input_ids": ids[None, CONTEXT:], "feature_embeds": np.zeros((1, 1, cfg.hidden_size), np.float32),
                     "feature_mask": np.zeros((1, 1), bool), **st.thinker.past_feeds()}
    stepper.think(ids[CONTEXT:])
    talker_feeds = {"bridge": st.bridge[None, CONTEXT:CONTEXT + 1], "codes": codes[None, :, CONTEXT:],
                    "spk_mask": np.zeros((1, 1), bool), "spk_emb": stepper.spk_emb, **st.talker.past_feeds()}

    def step():
        st.truncate(CONTEXT)
        stepper.run(ids[CONTEXT:], codes[:, CONTEXT:])

    runs = {"thinker": lambda: stepper.thinker.sess.run(None, thinker_feeds),
            "talker": lambda: stepper.talker.sess.run(None, talker_feeds), "step": step}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("thinker", "talker"):
            path = Path(tmp) / f"{name}.onnx"
            matmuls_only(model.bundle.graph_path(name), path)
            sess = ort.InferenceSession(os.fspath(path), ort_session_options(opts), providers=["CPUExecutionProvider"],
                                        disabled_optimizers=DISABLED_OPTIMIZERS)
            feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
            runs[f"{name} matmuls alone"] = lambda s=sess, f=feeds: s.run(None, f)
        res = {k: [] for k in runs}
        for _ in range(a.rounds):
            for k, f in runs.items():
                res[k].append(float(np.median(timed_ms(f, 60))))
    med = {k: float(np.median(v)) for k, v in res.items()}
    print("  ".join(f"{k} {v:.3f} ms" for k, v in med.items()))
    rest = med["thinker"] + med["talker"] - med["thinker matmuls alone"] - med["talker matmuls alone"]
    print(f"graphs minus their weight matmuls: {rest:.3f} ms of a {med['step']:.3f} ms step")


if __name__ == "__main__":
    main()
