"""Shared export steps: trace a wrapper module to ONNX by its GraphSpec, simplify safely, run, compare.

Every graph goes through `export_graph` so names and dynamic axes always come from the contract (never typed by
hand), and through `verify_parity`, which reports every failing output at once.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from omni_onnx.contracts import GraphSpec, TensorSpec
from omni_onnx.session import SessionOptions, ort_session_options

log = logging.getLogger(__name__)

OPSET = 17
# onnxsim folds and fuses (reordering float sums by ~1e-6 of an output's scale); more means it changed the maths
SIMPLIFY_RTOL = 1e-5


def output_scale(ref: np.ndarray) -> float:
    """What a gate's tolerance is relative to: the output's largest magnitude, at least 1. Float32 rounding
    grows with the values (a trained model's logits reach ~100), so an absolute gate fails on real weights;
    below 1 the gate stays absolute, so near-zero outputs are not held to a vanishing tolerance."""
    return max(1.0, float(np.max(np.abs(ref), initial=0.0)))


def relative_diff(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max |ref - got|, that divided by `output_scale(ref)`), in float64; NaN anywhere gives NaN."""
    diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)), initial=0.0))
    return diff, diff / output_scale(ref)


class ParityError(Exception):
    """An exported graph's outputs differ from the torch reference beyond the spec's tolerance."""


def to_numpy(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def run_onnx(model: str | Path | onnx.ModelProto, feeds: Mapping[str, np.ndarray],
             threads: int = 0) -> dict[str, np.ndarray]:
    """Run a graph (file or in-memory proto) on CPU with named feeds; returns every output by name."""
    so = ort_session_options(SessionOptions(threads=threads))
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    sess = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def export_graph(module: torch.nn.Module, example_inputs: Mapping[str, torch.Tensor], spec: GraphSpec,
                 path: str | Path, simplify: bool = True) -> Path:
    """Trace `module` (positional args in spec.inputs order, a tuple of outputs in spec.outputs order) to `path`.

    TorchScript exporter (dynamo=False, see dependency-findings), opset 17, weights inside the file. With
    `simplify`, onnxsim's result replaces the export only if it reproduces the export's outputs on the example.
    MoE experts are then moved into If branches (moe_branches.py).
    """
    names = [t.name for t in spec.inputs]
    if set(example_inputs) != set(names):
        raise ValueError(f"example inputs for {spec.graph} must be exactly {names}; "
                         f"missing {sorted(set(names) - set(example_inputs))}, "
                         f"extra {sorted(set(example_inputs) - set(names))}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(example_inputs[n] for n in names)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # the TorchScript exporter is a deliberate choice (dependency-findings); its deprecation notices are noise
        for notice in ("You are using the legacy TorchScript", "The feature will be removed"):
            warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
        torch.onnx.export(module, args, os.fspath(path), input_names=names,
                          output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(),
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    if simplify:
        _simplify_in_place(path, to_numpy(example_inputs))
    _branch_experts_in_place(path)
    _stamp_shapes(path, spec)
    return path


def _branch_experts_in_place(path: Path) -> None:
    """MoE graphs: each expert in an If, so a decode step runs only the chosen one (moe_branches.py)."""
    from .moe_branches import branch_experts

    model = onnx.load(os.fspath(path))
    if branch_experts(model):
        onnx.save(model, os.fspath(path))


def _stamp_shapes(path: Path, spec: GraphSpec) -> None:
    """Write the contract's dims onto the graph's inputs and outputs: the tracer leaves some output dims as
    generated names (e.g. a batch dim it could not prove is 1), which the load-time contract check would reject."""
    model = onnx.load(os.fspath(path))
    dims = {t.name: t.dims for t in spec.inputs + spec.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        shape = value.type.tensor_type.shape
        for d, want in zip(shape.dim, dims.get(value.name, ())):
            if isinstance(want, int):
                d.dim_value = want
            else:
                d.dim_param = want
    onnx.save(model, os.fspath(path))


# onnxsim folds constants with its own onnxruntime sessions, which onnxruntime refuses once this process has created
# the runtime's shared thread pool; so it runs in a child process.
_SIMPLIFY = "import sys, onnx, onnxsim; m, _ = onnxsim.simplify(onnx.load(sys.argv[1]), check_n=0); onnx.save(m, sys.argv[2])"


def _simplify_in_place(path: Path, feeds: dict[str, np.ndarray]) -> None:
    simpler_path = path.with_suffix(".simplified.onnx")
    try:
        done = subprocess.run([sys.executable, "-c", _SIMPLIFY, os.fspath(path), os.fspath(simpler_path)],
                              capture_output=True, text=True)
        if done.returncode != 0:  # onnxsim fails on some graphs; the plain export is still valid
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            log.warning("onnxsim failed on %s (%s); keeping the plain export", path.name, reason)
            return
        model, simpler = onnx.load(os.fspath(path)), onnx.load(os.fspath(simpler_path))
        before, after = run_onnx(model, feeds), run_onnx(simpler, feeds)
        name, (diff, rel) = max(((k, relative_diff(before[k], after[k])) for k in before), key=lambda x: x[1][1])
        if not rel <= SIMPLIFY_RTOL:
            log.warning("onnxsim changed %s output %s by %.3g (%.2g of its scale, gate %g); keeping the plain "
                        "export", path.name, name, diff, rel, SIMPLIFY_RTOL)
            return
        log.info("onnxsim: %s %d -> %d nodes", path.name, len(model.graph.node), len(simpler.graph.node))
        os.replace(simpler_path, path)
    finally:
        simpler_path.unlink(missing_ok=True)


def verify_parity(spec: GraphSpec, torch_outputs: Mapping[str, np.ndarray | torch.Tensor],
                  ort_outputs: Mapping[str, np.ndarray], atol: float | None = None,
                  label: str = "") -> dict[str, float]:
    """Compare every spec output; raise one ParityError listing all failures. The gate is `atol` (the spec's by
    default) relative to each output's scale (`output_scale`). Returns max abs diff per output."""
    atol = spec.atol if atol is None else atol
    diffs: dict[str, float] = {}
    failures: list[str] = []
    for t in spec.outputs:
        if t.name not in torch_outputs or t.name not in ort_outputs:
            side = "torch" if t.name not in torch_outputs else "onnx"
            failures.append(f"- {t.name}: missing from the {side} outputs")
            continue
        ref = torch_outputs[t.name]
        ref = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
        got = np.asarray(ort_outputs[t.name])
        if ref.shape != got.shape:
            failures.append(f"- {t.name}: shape {got.shape}, torch {ref.shape}")
            continue
        diff, rel = relative_diff(ref, got)
        diffs[t.name] = diff
        if not rel <= atol:  # also catches NaN
            failures.append(f"- {t.name}: max diff {diff:.3g} = {rel:.3g} of its scale {output_scale(ref):.3g} "
                            f"> {atol:g}")
    if failures:
        where = f" ({label})" if label else ""
        raise ParityError(f"graph {spec.graph}{where} differs from torch:\n" + "\n".join(failures))
    return diffs


def shape_of(t: TensorSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
    """A spec tensor's concrete shape with its symbolic dims (seq, past_seq) filled from `dims`."""
    return tuple(d if isinstance(d, int) else dims[d] for d in t.dims)


def kv_pairs(flat: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[k0, v0, k1, v1, ...] (the contract's past_key_i/past_value_i order) -> [(k0, v0), (k1, v1), ...]."""
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def flatten_kv(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [t for kv in pairs for t in kv]


def random_past(spec: GraphSpec, past_seq: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random float32 values for every past_* input (unit scale, like K after k_norm)."""
    return {t.name: torch.randn(shape_of(t, {"past_seq": past_seq}), generator=gen)
            for t in spec.inputs if t.name.startswith("past_")}


def past_from_feeds(spec: GraphSpec,
                    feeds: Mapping[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The feeds' KV cache as the torch modules take it: per-layer (k, v), or None when it is empty."""
    past = kv_pairs([feeds[t.name] for t in spec.inputs if t.name.startswith("past_")])
    return past if past and past[0][0].shape[1] else None


def present_outputs(presents: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    past: Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> dict[str, torch.Tensor]:
    """The contract's present_* outputs (new positions only) from the modules' full caches."""
    past_seq = past[0][0].shape[1] if past else 0
    out = {}
    for i, (k, v) in enumerate(presents):
        out[f"present_key_{i}"], out[f"present_value_{i}"] = k[:, past_seq:], v[:, past_seq:]
    return out


def verify_graph(path: str | Path, spec: GraphSpec,
                 cases: Iterable[tuple[str, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]]
                 ) -> dict[str, dict[str, float]]:
    """Open `path` with the runtime's GraphSession (checks the contract), run each (label, feeds, torch reference)
    case and compare. Raises one ParityError covering every failing case; returns max diffs per case and output."""
    from omni_onnx.session import GraphSession

    sess = GraphSession(Path(path), spec)
    results: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    for label, feeds, ref in cases:
        try:
            results[label] = verify_parity(spec, ref, sess.run(to_numpy(feeds)), label=label)
        except ParityError as e:
            failures.append(str(e))
    if failures:
        raise ParityError("\n".join(failures))
    return results


def verify_shapes(path: str | Path, spec: GraphSpec, make_inputs, reference,
                  cases: Iterable[tuple[int, int]]) -> dict[str, dict[str, float]]:
    """verify_graph over (seq, past_seq) cases: `make_inputs(seq, past_seq, seed)` -> feeds,
    `reference(feeds)` -> the contract's outputs computed in torch."""
    runs = []
    for n, (seq, past_seq) in enumerate(cases):
        feeds = make_inputs(seq, past_seq, 100 + n)
        runs.append((f"seq={seq} past_seq={past_seq}", feeds, reference(feeds)))
    return verify_graph(path, spec, runs)
