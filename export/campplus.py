"""CAM++ speaker encoder (3D-Speaker / modelscope `CAMPPlus`, the one upstream's web demo uses for cloning) in torch,
and its export to `campplus.onnx`: mean-normalised log-mel features [1, frames, 80] -> raw embedding [1, 192].

Written from the published architecture (Wang et al., "CAM++", Interspeech 2023; modelscope `CAMPPlus(feat_dim=80,
embedding_size=192, growth_rate=32, bn_size=4, init_channels=128, config_str='batchnorm-relu')`), with module names
chosen so that the released `campplus_cn_common.pt` state dict loads with strict=True:

    head (FCM): conv3x3 1->32 + BN + ReLU, two stages of 2 residual 2-D blocks (the first of each halves the
        frequency axis), conv3x3 stride (2, 1) + BN + ReLU -> [B, 32 * 80/8, T]
    xvector.tdnn: conv k5 stride 2 -> 128 + BN + ReLU                                        -> [B, 128, T/2]
    xvector.block{1,2,3}: 12/24/16 dense CAM layers (k3, dilation 1/2/2), each appending 32 channels:
        BN-ReLU, 1x1 conv -> 128, BN-ReLU, then a k3 conv -> 32 gated by a sigmoid mask computed from the
        clip mean plus the mean of the layer's 100-frame segment (context-aware masking)
    xvector.transit{1,2,3}: BN-ReLU, 1x1 conv halving the channels (512->256, 1024->512, 1024->512)
    xvector.out_nonlinear: BN-ReLU; stats: mean and unbiased std over time -> 1024
    xvector.dense: 1x1 conv 1024 -> 192 + BatchNorm without affine
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from omni_onnx.contracts import campplus_spec

from .checkpoint import torch_load
from .common import OPSET, export_graph, verify_graph
from .inputs import check_campplus_file

FEAT_DIM = 80
EMBEDDING_SIZE = 192
SEGMENT_FRAMES = 100  # context-aware masking pools over segments of this many frames (after the stride-2 TDNN)


def _bn_relu(channels: int) -> nn.Sequential:
    """Keys `<name>.batchnorm.*`, as the released checkpoint names its "batchnorm-relu" blocks."""
    seq = nn.Sequential()
    seq.add_module("batchnorm", nn.BatchNorm1d(channels))
    seq.add_module("relu", nn.ReLU())
    return seq


class ResBlock2d(nn.Module):
    """conv3x3 (stride on frequency only) + BN + ReLU, conv3x3 + BN, plus a projected shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class FCM(nn.Module):
    """Front-end 2-D conv module over (frequency, time): [B, F, T] -> [B, channels * F/8, T]."""

    def __init__(self, feat_dim: int = FEAT_DIM, channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(ResBlock2d(channels, channels, 2), ResBlock2d(channels, channels, 1))
        self.layer2 = nn.Sequential(ResBlock2d(channels, channels, 2), ResBlock2d(channels, channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        x = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(x)))))
        return x.flatten(1, 2)


class TDNN(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int):
        super().__init__()
        self.linear = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.nonlinear = _bn_relu(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_means(x: torch.Tensor, seg: int = SEGMENT_FRAMES) -> torch.Tensor:
    """Each frame gets the mean of its `seg`-frame segment (the last segment may be shorter and averages only its
    own frames): average pooling with ceil_mode, stretched back to one value per frame."""
    pooled = F.avg_pool1d(x, seg, seg, ceil_mode=True)  # [B, C, ceil(T/seg)]
    stretched = pooled.unsqueeze(-1).expand(-1, -1, -1, seg).flatten(2)
    return stretched[..., :x.shape[-1]]


class CAMLayer(nn.Module):
    """Local k3 conv, gated per channel and frame by sigmoid(MLP(clip mean + segment mean))."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int, reduction: int = 2):
        super().__init__()
        self.linear_local = nn.Conv1d(in_ch, out_ch, kernel, padding=(kernel - 1) // 2 * dilation,
                                      dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(in_ch, in_ch // reduction, 1)
        self.linear2 = nn.Conv1d(in_ch // reduction, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(-1, keepdim=True) + segment_means(x)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * mask


class DenseCAMLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bottleneck: int, kernel: int, dilation: int):
        super().__init__()
        self.nonlinear1 = _bn_relu(in_ch)
        self.linear1 = nn.Conv1d(in_ch, bottleneck, 1, bias=False)
        self.nonlinear2 = _bn_relu(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseBlock(nn.Module):
    """Densely connected: every layer sees all earlier outputs and appends `growth` channels."""

    def __init__(self, layers: int, in_ch: int, growth: int, bottleneck: int, kernel: int, dilation: int):
        super().__init__()
        for i in range(layers):
            self.add_module(f"tdnnd{i + 1}", DenseCAMLayer(in_ch + i * growth, growth, bottleneck, kernel, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], 1)
        return x


class Transit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.nonlinear = _bn_relu(in_ch)
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(-1), x.std(-1, unbiased=True)], -1)


class Dense(nn.Module):
    """1x1 conv on the pooled vector, then a BatchNorm without affine parameters."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(out_ch, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """[B, frames, feat_dim] features -> [B, embedding_size] (eval mode: BatchNorm uses the running statistics)."""

    def __init__(self, feat_dim: int = FEAT_DIM, embedding_size: int = EMBEDDING_SIZE, growth_rate: int = 32,
                 bn_size: int = 4, init_channels: int = 128):
        super().__init__()
        self.head = FCM(feat_dim)
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", TDNN(self.head.out_channels, init_channels, 5, stride=2))
        channels = init_channels
        for i, (layers, dilation) in enumerate(zip((12, 24, 16), (1, 2, 2)), start=1):
            self.xvector.add_module(f"block{i}", DenseBlock(layers, channels, growth_rate, bn_size * growth_rate,
                                                            3, dilation))
            channels += layers * growth_rate
            self.xvector.add_module(f"transit{i}", Transit(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.xvector.add_module("stats", StatsPool())
        self.xvector.add_module("dense", Dense(2 * channels, embedding_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.xvector(self.head(features.transpose(1, 2)))


def load_campplus(path: str | Path) -> CAMPPlus:
    """Load `campplus_cn_common.pt` (a plain state dict, any float dtype) strictly, in eval mode, fp32."""
    path = check_campplus_file(path)
    sd = torch_load(path, "CAM++ checkpoint", "pass upstream's model/campplus/campplus_cn_common.pt")
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict; expected campplus_cn_common.pt")
    model = CAMPPlus()
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a CAM++ (feat 80, embedding 192) state dict: "
                         f"{str(e).splitlines()[0]}") from None
    return model.eval()


def _example(frames: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(1, frames, FEAT_DIM, generator=gen)}


def export(model: CAMPPlus, out_path: str | Path) -> Path:
    """Write the `campplus` graph (fp32, opset 17, dynamic frames)."""
    spec = campplus_spec()
    # no onnxsim: it halves the node count but not the run time (onnxruntime fuses the BatchNorms itself), and
    # doubles the export time
    out = export_graph(model.eval(), _example(250, 0), spec, out_path, simplify=False)
    m = onnx.load(str(out))
    onnx.helper.set_model_props(m, {"graph": spec.graph, "contract_version": str(spec.version),
                                    "opset": str(OPSET), "precision": "fp32"})
    onnx.save(m, str(out))
    return out


def verify(model: CAMPPlus, onnx_path: str | Path, frames: tuple[int, ...] = (150, 301, 600)) -> dict[str, float]:
    """ONNX vs torch on random features of several lengths (segment pooling with a partial last segment, and the
    6 s maximum a clone reference reaches); returns the worst max abs difference."""
    cases = []
    for n, f in enumerate(frames):
        feeds = _example(f, 10 + n)
        with torch.no_grad():
            cases.append((f"frames={f}", feeds, {"embedding": model(feeds["features"])}))
    diffs = verify_graph(onnx_path, campplus_spec(), cases)
    return {"embedding": max(d["embedding"] for d in diffs.values())}

