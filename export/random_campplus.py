"""A random-weight `campplus_cn_common.pt` (plain CAM++ state dict, the released format), for tests and demo
bundles without a download.

A fresh module's BatchNorms hold mean 0 / variance 1 and unit affine parameters, which would leave the running
statistics untested; they are re-drawn here, and the variances are scaled so activations stay O(1) through the
52 dense layers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .campplus import CAMPPlus


def random_campplus(seed: int = 0) -> CAMPPlus:
    torch.manual_seed(seed)
    model = CAMPPlus()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                if m.affine:
                    m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
                torch.nn.init.kaiming_normal_(m.weight, generator=gen)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def write_random_campplus(path: str | Path, seed: int = 0) -> Path:
    """Write a deterministic random CAM++ state dict to `path` (e.g. .../campplus/campplus_cn_common.pt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_campplus(seed).state_dict(), path)
    return path
