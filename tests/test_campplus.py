"""CAM++: the released state-dict layout, segment pooling against a loop over its definition, and the exported
graph against our torch module (full size, random weights)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from omni_onnx.contracts import campplus_spec  # noqa: E402
from omni_onnx.export.campplus import CAMPPlus, load_campplus, segment_means, verify  # noqa: E402
from omni_onnx.session import GraphSession  # noqa: E402

# (key, shape) facts of modelscope's CAMPPlus(feat_dim=80, embedding_size=192) state dict
RELEASED_KEYS = {
    "head.conv1.weight": (32, 1, 3, 3),
    "head.layer1.0.shortcut.0.weight": (32, 32, 1, 1),
    "head.layer2.1.conv2.weight": (32, 32, 3, 3),
    "head.bn2.running_var": (32,),
    "xvector.tdnn.linear.weight": (128, 320, 5),
    "xvector.tdnn.nonlinear.batchnorm.weight": (128,),
    "xvector.block1.tdnnd1.nonlinear1.batchnorm.running_mean": (128,),
    "xvector.block1.tdnnd1.linear1.weight": (128, 128, 1),
    "xvector.block1.tdnnd12.cam_layer.linear_local.weight": (32, 128, 3),
    "xvector.block1.tdnnd12.cam_layer.linear1.bias": (64,),
    "xvector.block1.tdnnd12.cam_layer.linear2.weight": (32, 64, 1),
    "xvector.transit1.linear.weight": (256, 512, 1),
    "xvector.block2.tdnnd24.nonlinear1.batchnorm.weight": (992,),
    "xvector.transit2.linear.weight": (512, 1024, 1),
    "xvector.block3.tdnnd16.nonlinear2.batchnorm.num_batches_tracked": (),
    "xvector.transit3.linear.weight": (512, 1024, 1),
    "xvector.out_nonlinear.batchnorm.bias": (512,),
    "xvector.dense.linear.weight": (192, 1024, 1),
    "xvector.dense.nonlinear.batchnorm.running_mean": (192,),
}


@pytest.fixture(scope="module")
def model(tiny_campplus):
    return load_campplus(tiny_campplus)


@pytest.fixture(scope="module")
def graph(tiny_clone_bundle):
    """Exported by omni-export's code path for the clone bundle (checked by the tests below)."""
    return tiny_clone_bundle / "campplus.onnx"


def test_state_dict_has_the_released_layout():
    sd = CAMPPlus().state_dict()
    assert {k: tuple(sd[k].shape) for k in RELEASED_KEYS if k in sd} == RELEASED_KEYS
    assert "xvector.dense.nonlinear.batchnorm.weight" not in sd  # the last BatchNorm has no affine parameters
    assert len(sd) == 937 and sum(v.numel() for k, v in sd.items() if "running" not in k and "batches" not in k) \
        == 6_848_544


def test_load_is_strict(tiny_campplus, tmp_path):
    sd = torch.load(tiny_campplus)
    sd.pop("xvector.dense.linear.weight")
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="not a CAM"):
        load_campplus(tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_campplus(tmp_path / "missing.pt")


@pytest.mark.parametrize("frames", [7, 100, 101, 250])
def test_segment_means_follow_their_definition(frames):
    x = torch.randn(2, 3, frames, dtype=torch.float64)
    want = torch.empty_like(x)
    for start in range(0, frames, 100):  # every frame gets the mean of its 100-frame segment
        want[..., start:start + 100] = x[..., start:start + 100].mean(-1, keepdim=True)
    torch.testing.assert_close(segment_means(x), want, rtol=0, atol=1e-12)


def test_onnx_matches_torch(model, graph):
    # 150/301 feature frames: partial last segments after the stride-2 TDNN; 600: the 6 s maximum of a reference
    diff = verify(model, graph, frames=(20, 150, 301, 600))
    assert diff["embedding"] <= 1e-4


def test_graph_contract(graph):
    sess = GraphSession(graph, campplus_spec())
    out = sess.run({"features": np.zeros((1, 50, 80), np.float32)})["embedding"]
    assert out.shape == (1, 192) and np.isfinite(out).all()
