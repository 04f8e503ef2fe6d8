"""Vision graph: SigLIP2 vision tower + MiniMind-O's vision projector, one ONNX graph.

    pixel_values [1,3,256,256] -> patch conv + learned positions -> 12 pre-LN layers -> post_layernorm
      = upstream's `last_hidden_state` [1,64,768] (the pooling head is never run) -> vision_proj -> [1,64,hidden]

The graph is traced from FusedVisionGraph: the same maths with onnxruntime's fused Attention and FastGelu nodes.

The projector is folded in (unlike the audio one, whose input also feeds the CTC head): nothing else reads the
tower's output, and a second session would only add a call and a copy per image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import SiglipVisionModel

from omni_onnx.contracts import vision_spec
from omni_onnx.image import PREPROCESSOR_FILE

from .common import export_graph, verify_graph
from .inputs import check_siglip_folder
from .modeling import OmniTorchModel

FILENAME = "vision.onnx"


def load_siglip(folder: str | Path) -> SiglipVisionModel:
    """Load the HF vision-tower folder (config.json + weights + preprocessor_config.json) as upstream does, fp32."""
    folder = check_siglip_folder(folder)
    model, info = SiglipVisionModel.from_pretrained(folder, output_loading_info=True, dtype=torch.float32)
    missing = [k for k in info["missing_keys"] if not k.removeprefix("vision_model.").startswith("head.")]
    if missing:  # the pooling head may be absent: it is never run
        raise ValueError(f"{folder} lacks {len(missing)} vision-tower weights (e.g. {missing[:3]}); "
                         f"the folder is incomplete or not a SigLIP vision checkpoint")
    return model.eval()


def preprocessor_config(folder: str | Path) -> dict[str, Any]:
    """The folder's image-processor settings, for the bundle (the runtime preprocesses with them)."""
    return json.loads((Path(folder) / PREPROCESSOR_FILE).read_text())


def image_size(siglip: SiglipVisionModel) -> int:
    return int(siglip.config.image_size)


class VisionGraph(nn.Module):
    """vision_spec signature: pixel_values -> (image_embeds,)."""

    def __init__(self, siglip: SiglipVisionModel, model: OmniTorchModel):
        super().__init__()
        cfg, vc = model.cfg, siglip.config
        patches = (vc.image_size // vc.patch_size) ** 2
        if vc.hidden_size != cfg.image_hidden_size or patches != cfg.image_token_len:
            raise ValueError(f"SigLIP folder gives {patches} patches of width {vc.hidden_size}; the checkpoint's "
                             f"vision projector expects {cfg.image_token_len} of width {cfg.image_hidden_size}. "
                             f"Pair the checkpoint with the SigLIP folder it was trained with")
        self.siglip, self.model = siglip, model

    def forward(self, pixel_values: Tensor) -> tuple[Tensor]:
        s = self.siglip
        h = s.encoder(inputs_embeds=s.embeddings(pixel_values)).last_hidden_state
        return (self.model.vision_project(s.post_layernorm(h)),)


class _Attention(torch.autograd.Function):
    """Packed QKV projection + softmax attention (no mask), exported as one com.microsoft.Attention node, which
    omni-quant turns into QAttention (int8 projection): ~14 nodes per layer become one."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, heads: int, scale: float) -> Tensor:
        q, k, v = (x @ weight + bias).unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
        return nn.functional.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g, x, weight, bias, heads: int, scale: float):
        return g.op("com.microsoft::Attention", x, weight, bias, num_heads_i=heads, scale_f=scale).setType(x.type())


class _FastGelu(torch.autograd.Function):
    """tanh-approximated GELU as one com.microsoft.FastGelu node (traced, the formula is 9 element-wise nodes)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return nn.functional.gelu(x, approximate="tanh")

    @staticmethod
    def symbolic(g, x):
        return g.op("com.microsoft::FastGelu", x).setType(x.type())


class FusedVisionGraph(VisionGraph):
    """What `export` traces: VisionGraph's maths (checked against transformers' forward at export) in the form
    onnxruntime runs fastest. The patch Conv2d (kernel = stride = patch) becomes patchify + MatMul, which int8
    reaches (onnxruntime's Conv took ~3.5 ms, the int8 MatMul ~0.3, 1 thread); each layer's attention and MLP
    activation become single contrib nodes (383 -> 129 nodes once int8). Full size, 1-thread CPU time, side by
    side: int8 32.2 -> 24.5 ms, fp32 110 -> 102 ms.
    VisionGraph itself stays transformers' eager path: it is the torch reference the benchmarks time."""

    def embed(self, pixel_values: Tensor) -> Tensor:
        emb = self.siglip.embeddings
        conv = emb.patch_embedding
        width, channels, p, _ = conv.weight.shape
        grid = pixel_values.shape[-1] // p
        patches = (pixel_values.reshape(-1, channels, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5)
                   .reshape(-1, grid * grid, channels * p * p))  # row = patch (row-major), column = (c, y, x)
        # the conv bias folds into the learned positions: one constant
        return patches @ conv.weight.reshape(width, -1).t() + (conv.bias + emb.position_embedding.weight)

    def mlp(self, mlp: nn.Module, x: Tensor) -> Tensor:
        h = mlp.fc1(x)
        h = _FastGelu.apply(h) if self.siglip.config.hidden_act == "gelu_pytorch_tanh" else mlp.activation_fn(h)
        return mlp.fc2(h)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor]:
        h = self.embed(pixel_values)
        for layer in self.siglip.encoder.layers:
            a = layer.self_attn
            weight = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t()  # [hidden, 3 * hidden]
            bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            h = h + a.out_proj(_Attention.apply(layer.layer_norm1(h), weight, bias, a.num_heads, a.scale))
            h = h + self.mlp(layer.mlp, layer.layer_norm2(h))
        return (self.model.vision_project(self.siglip.post_layernorm(h)),)


def dummy_inputs(size: int, seed: int = 0) -> dict[str, Tensor]:
    """Pixel values in the preprocessed range [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.rand(1, 3, size, size, generator=g) * 2 - 1}


def reference_outputs(siglip: SiglipVisionModel, model: OmniTorchModel, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
    """Upstream's computation through transformers' public forward (independent of the wrapper)."""
    with torch.no_grad():
        hidden = siglip(pixel_values=feeds["pixel_values"]).last_hidden_state
        return {"image_embeds": model.vision_project(hidden)}


def export(siglip: SiglipVisionModel, model: OmniTorchModel, out_dir: str | Path) -> Path:
    """Write `out_dir/vision.onnx` (single file, weights inside)."""
    spec = vision_spec(model.cfg, image_size(siglip))
    # no onnxsim: it would only turn each 3-D Linear into Reshape -> Gemm -> Reshape (~70 nodes that outlive
    # quantization); onnxruntime folds the tracer's constants at load
    return export_graph(FusedVisionGraph(siglip, model), dummy_inputs(image_size(siglip)), spec,
                        Path(out_dir) / FILENAME, simplify=False)


def verify(siglip: SiglipVisionModel, model: OmniTorchModel, path: str | Path,
           seeds: tuple[int, ...] = (1, 2)) -> dict[str, dict[str, float]]:
    """Parity of the graph at `path` (opened through GraphSession) against transformers + our projector."""
    cases = []
    for seed in seeds:
        feeds = dummy_inputs(image_size(siglip), seed)
        cases.append((f"seed={seed}", feeds, reference_outputs(siglip, model, feeds)))
    return verify_graph(path, vision_spec(model.cfg, image_size(siglip)), cases)
