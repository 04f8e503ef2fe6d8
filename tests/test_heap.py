"""Memory behaviour of session loading: freed heap goes back to the OS, and every session shares one arena.

RSS is read from the kernel (/proc/self/status), independently of the code under test.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import onnx
import pytest
from omni_onnx import session
from omni_onnx.heap import lazy_zeros, release_free_heap
from omni_onnx.session import SessionOptions, make_session, ort_session_options
from onnx import TensorProto, helper, numpy_helper

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@linux
def test_release_free_heap_returns_freed_pages_to_the_os():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 96 MB in 64 KiB blocks (under glibc's mmap threshold: they come from the heap), then one block above them,
    # so freeing the rest leaves a hole glibc does not hand back by itself
    blocks = [libc.malloc(64 << 10) for _ in range(1536)]
    keep = libc.malloc(64 << 10)
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)
    resident = rss_mb()
    for b in blocks:
        libc.free(b)
    freed_alone = resident - rss_mb()
    assert release_free_heap()
    freed_trimmed = resident - rss_mb()
    libc.free(keep)
    assert freed_trimmed - freed_alone > 64, (freed_alone, freed_trimmed)


def _matmul_graph(path):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return numpy_helper.to_array(w)


def test_make_session_trims_the_heap_after_loading(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(session, "release_free_heap", lambda: calls.append(1) or True)
    w = _matmul_graph(tmp_path / "g.onnx")
    sess = make_session(tmp_path / "g.onnx", SessionOptions(threads=2))
    assert calls == [1]
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ w, rtol=1e-6)


def test_sessions_share_the_process_arena_and_keep_weights_outside_it(tmp_path):
    so = ort_session_options(SessionOptions(threads=2))
    assert so.get_session_config_entry("session.use_env_allocators") == "1"
    assert so.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    w = _matmul_graph(tmp_path / "g.onnx")
    a, b = (make_session(tmp_path / "g.onnx", SessionOptions(threads=2)) for _ in range(2))
    x = np.ones((1, 3), np.float32)
    for s in (a, b):
        np.testing.assert_allclose(s.run(None, {"x": x})[0], x @ w, rtol=1e-6)


@linux
def test_lazy_zeros_are_resident_only_where_written():
    """A KV cache sized to the context limit costs only the positions a conversation has filled."""
    before = rss_mb()
    kv = lazy_zeros((1, 4096, 8, 256), np.float32)  # 32 MiB
    assert kv.shape == (1, 4096, 8, 256) and kv.dtype == np.float32 and kv.flags.writeable
    assert not kv[:, ::97].any() and rss_mb() - before < 4
    kv[:, :2048] = 1.0
    assert 14 < rss_mb() - before < 20 and kv.sum() == 2048 * 8 * 256


def _tied_int8_graph(path, rows: int, d: int):
    """A Thinker's tied embedding in small: one int8 [d, rows] table read by a Gather (the embedding lookup) and by a
    DynamicQuantizeMatMul (the lm_head), as omni-quant writes them."""
    table = np.random.default_rng(0).integers(-63, 64, (d, rows), dtype=np.int8)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.full(rows, 0.01, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(rows, np.int8), "zero")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=1),
             helper.make_node("DynamicQuantizeMatMul", ["x", "table", "scale", "zero"], ["logits"],
                              domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
                              [helper.make_tensor_value_info("rows", TensorProto.INT8, [d, 1]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, rows])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]), path)


@linux
def test_unpacked_sessions_hold_no_packed_copy_of_their_weights(tmp_path):
    """`prepack=False` reaches onnxruntime: a 32 MB int8 table that the lookup also reads is resident once, where
    prepacking keeps the lm_head's packed copy beside it (the full Thinker's +5 MB)."""
    _tied_int8_graph(tmp_path / "g.onnx", 8192, 4096)
    make_session(tmp_path / "g.onnx", SessionOptions(threads=2))  # onnxruntime's first-use setup
    resident = {}
    for prepack in (False, True):
        release_free_heap()
        before = rss_mb()
        sess = make_session(tmp_path / "g.onnx", SessionOptions(threads=2, prepack=prepack))
        resident[prepack] = rss_mb() - before
        del sess
    assert resident[False] < 40 and resident[True] - resident[False] > 24, resident


def test_the_runtime_opens_vision_unpacked_and_the_other_graphs_packed(tiny_bundle):
    from omni_onnx.model import OmniModel

    def disabled(graph) -> bool:
        try:
            return graph.sess.get_session_options().get_session_config_entry("session.disable_prepacking") == "1"
        except RuntimeError:  # not set
            return False

    model = OmniModel.load(tiny_bundle)
    assert disabled(model.vision)
    assert not any(disabled(g) for g in (model.thinker, model.talker, model.mimi.session, model.speech.session,
                                         model.audio_projector))
