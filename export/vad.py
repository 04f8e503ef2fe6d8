"""Silero VAD into the bundle: the `silero-vad` package's released ONNX file, with our contract's tensor names.

The graph is not re-exported (its weights are the trained release). Its tensors are renamed by wrapping: new graph
inputs/outputs with the contract names, joined to the original names by Identity nodes, so the file's If-branches,
which read the original names from the outer scope, stay valid. Shapes are pinned to one stream (batch 1).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from omni_onnx.contracts import GraphSpec, silero_vad_spec
from onnx import helper

VAD_FILE = "silero_vad.onnx"
LICENSE_FILE = "LICENSE.silero-vad"
# contract name -> the name in silero_vad.onnx
INPUT_NAMES = {"audio": "input", "past_state": "state", "sr": "sr"}
OUTPUT_NAMES = {"speech_prob": "output", "present_state": "stateN"}
_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}


def packaged_vad() -> tuple[Path, Path]:
    """(silero_vad.onnx, its MIT licence) from the installed `silero-vad` package."""
    try:
        import silero_vad
    except ImportError:
        raise ValueError("the VAD comes from the silero-vad package: pip install 'omni-onnx[export]' "
                         "(or `pip install --no-deps silero-vad`)") from None
    pkg = Path(silero_vad.__file__).parent
    model = pkg / "data" / VAD_FILE
    licences = sorted(pkg.parent.glob("silero_vad-*.dist-info/licenses/LICENSE"))
    if not model.is_file() or not licences:
        raise ValueError(f"the silero-vad package at {pkg} lacks {VAD_FILE} or its LICENSE; reinstall it")
    return model, licences[-1]


def _value(name: str, dtype: str, dims: tuple) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _ONNX_TYPES[dtype], list(dims))


def rename_to_contract(src: Path, dst: Path, spec: GraphSpec) -> None:
    model = onnx.load(str(src))
    g = model.graph
    if {i.name for i in g.input} != set(INPUT_NAMES.values()) or \
            {o.name for o in g.output} != set(OUTPUT_NAMES.values()):
        raise ValueError(f"{src} has inputs {[i.name for i in g.input]} and outputs {[o.name for o in g.output]}; "
                         f"expected the silero-vad v5+ file (input, state, sr -> output, stateN)")
    wrap_in = [helper.make_node("Identity", [new], [old], name=f"contract_{new}")
               for new, old in INPUT_NAMES.items() if new != old]
    wrap_out = [helper.make_node("Identity", [OUTPUT_NAMES[new]], [new], name=f"contract_{new}")
                for new in OUTPUT_NAMES]
    nodes = wrap_in + list(g.node) + wrap_out
    del g.node[:]
    g.node.extend(nodes)
    del g.input[:]
    g.input.extend(_value(t.name, t.dtype, t.dims) for t in spec.inputs)
    del g.output[:]
    g.output.extend(_value(t.name, t.dtype, t.dims) for t in spec.outputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def write_vad(work: Path) -> tuple[Path, GraphSpec, str]:
    """Write the renamed graph and its licence into `work`; returns (graph path, contract, licence file name)."""
    model, licence = packaged_vad()
    spec = silero_vad_spec()
    path = work / VAD_FILE
    rename_to_contract(model, path, spec)
    text = licence.read_text(encoding="utf-8")
    (work / LICENSE_FILE).write_text(f"{VAD_FILE}: Silero VAD (silero-vad package), MIT licence:\n\n{text}",
                                     encoding="utf-8")
    return path, spec, LICENSE_FILE
