"""One wrapper class for every ONNX graph: opens the session, checks the contract, runs by name."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contracts import DIMS, ContractError, GraphSpec
from .errors import BundleError
from .heap import release_free_heap

log = logging.getLogger(__name__)

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)",
              "float16": "tensor(float16)", "int32": "tensor(int32)"}


@dataclass(frozen=True)
class SessionOptions:
    threads: int = 0  # intra-op threads of the process-wide pool; 0: one per core
    # onnxruntime repacks int8 MatMul weights for its kernels at load: a decode step needs it (full-size int8
    # Thinker+Talker step 6.2 -> 10.1 ms without), but while a graph opens its packed and original weights are
    # resident together (SigLIP: peak +60 MB over its 87 MB resident, +11 MB unpacked)
    prepack: bool = True


_pool_threads: int | None = None  # size of the process-wide pool, once created


def _ensure_shared_pool(threads: int) -> None:
    """Every graph runs on one process-wide thread pool. The graphs run one after another; with a pool each, the
    idle pools' spinning workers steal the cores from the running one (2-core machine, full-size Thinker+Talker
    step: 39.5 ms with a pool per session, 19.0 ms shared)."""
    global _pool_threads
    n = threads or os.cpu_count() or 1
    if _pool_threads is None:
        ort.set_global_thread_pool_sizes(n, 1)
        _pool_threads = n
    elif _pool_threads != n:
        log.warning("the onnxruntime thread pool already has %d threads; ignoring threads=%d", _pool_threads, n)


_shared_arena = False  # whether the process-wide activation arena is registered


def _ensure_shared_arena() -> None:
    """Every graph's activations come from one process-wide arena (after the pool: registering creates
    onnxruntime's environment). An arena never shrinks: with one per session each kept its own largest run
    (SenseVoice's alone ~11 MB); shared, they keep only the largest of all, as the graphs run one after another
    (full int8 bundle, one spoken turn: 16 MB less RSS, decode step and encoders equally fast, side by side)."""
    global _shared_arena
    if not _shared_arena:
        cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(cpu, ort.OrtArenaCfg(0, -1, -1, -1))  # onnxruntime's defaults
        _shared_arena = True


def ort_session_options(opts: SessionOptions) -> ort.SessionOptions:
    """onnxruntime settings for every session of this process (export-time checks included: once the shared
    pool exists, onnxruntime refuses sessions with pools of their own)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    _ensure_shared_pool(opts.threads)
    so.use_per_session_threads = False
    _ensure_shared_arena()
    so.add_session_config_entry("session.use_env_allocators", "1")
    # weights stay out of the arena, so the copies a load frees can go back to the OS (heap.py)
    so.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    if not opts.prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return so


# onnxruntime's CPU SkipLayerNormalization took 282 us where the Add + LayerNormalization it replaces take 104 us
# ([1, 64, 768], SigLIP's last residual; 2 threads, side by side), so that fusion is off at load and in omni-quant's
# offline pass.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def make_session(path: Path, opts: SessionOptions) -> ort.InferenceSession:
    """Open `path`, then hand back the heap its load freed (heap.py: ~160 MB of the full int8 bundle's RSS)."""
    so = ort_session_options(opts)
    try:
        sess = ort.InferenceSession(os.fspath(path), sess_options=so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=DISABLED_OPTIMIZERS)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"cannot load graph {path.name}: {first[:200]}. The file is corrupted or truncated; "
                          f"re-export the bundle with omni-export") from None
    release_free_heap()
    return sess


def check_contract(sess: ort.InferenceSession, spec: GraphSpec) -> None:
    """Raise ContractError listing every difference between the session's I/O and the spec."""
    problems: list[str] = []
    for kind, actual, expected in (("input", sess.get_inputs(), spec.inputs),
                                   ("output", sess.get_outputs(), spec.outputs)):
        got = {a.name: a for a in actual}
        for t in expected:
            a = got.pop(t.name, None)
            if a is None:
                problems.append(f"missing {kind} {t.name}")
                continue
            if a.type != _ORT_TYPES[t.dtype]:
                problems.append(f"{kind} {t.name}: dtype {a.type}, contract {t.dtype}")
            if len(a.shape) != len(t.dims):
                problems.append(f"{kind} {t.name}: rank {len(a.shape)}, contract {len(t.dims)}")
                continue
            for k, (have, want) in enumerate(zip(a.shape, t.dims)):
                if isinstance(want, int) and have != want:
                    problems.append(f"{kind} {t.name}: dim {k} is {have}, contract {want}")
                if isinstance(want, str) and want not in DIMS:
                    problems.append(f"{kind} {t.name}: unknown symbolic dim {want!r}")
        problems += [f"unexpected {kind} {n}" for n in got]
    if problems:
        raise ContractError(f"graph {spec.graph} does not match its contract:\n- " + "\n- ".join(problems))


class GraphSession:
    """An onnxruntime session bound to its contract. `run` takes and returns dicts keyed by tensor name."""

    def __init__(self, path: Path, spec: GraphSpec, opts: SessionOptions = SessionOptions()):
        self.path, self.spec = Path(path), spec
        self.sess = make_session(self.path, opts)
        check_contract(self.sess, spec)
        self._output_names = [o.name for o in spec.outputs]
        self._dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [t.name for t in self.spec.inputs if t.name not in feeds]
        if missing:
            raise RuntimeError(f"{self.spec.graph}: missing feeds {missing}")
        for name, arr in feeds.items():
            if arr.dtype != self._dtypes[name]:
                raise RuntimeError(f"{self.spec.graph}: feed {name} is {arr.dtype}, contract {self._dtypes[name]}")
        outs = self.sess.run(self._output_names, feeds)
        return dict(zip(self._output_names, outs))
