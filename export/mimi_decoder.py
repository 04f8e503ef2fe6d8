"""Export the streaming Mimi decoder: one code frame in, 1920 samples out, every piece of state explicit.

transformers' `MimiModel.decode` is exact only over a whole code sequence: its transposed convolutions keep no
state and its causal convolutions zero-pad every call, so decoding frame by frame drifts (relative error ~0.2).
`MimiStreamStep` calls the same submodules and weights but carries, per frame:

    codes [1,8,1] -> quantizer.decode -> latent [1,E,1]
      -> upsample convtr (+ overlap tail)                      -> [1,E,2]    (12.5 Hz -> 25 Hz)
      -> decoder transformer, steps `position`, `position+1`:
           attention over the KV ring (kv_window slots) + the 2 new keys, with the full decode's mask
           (key j visible from query i iff i - sliding_window < j <= i); new K/V go out as present_*
      -> SEANet decoder: causal convs (+ last k-1 inputs), convtrs (+ overlap tail minus bias)
      -> audio [1,1,1920]

so that frame-by-frame decoding equals `MimiModel.decode` of all frames at once, at any length.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from transformers import MimiModel
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiResnetBlock,
    MimiTransformerLayer,
    apply_rotary_pos_emb,
)

from omni_onnx.contracts import MimiDims, mimi_decoder_spec
from omni_onnx.mimi import MimiStreamDecoder
from omni_onnx.session import GraphSession

from .common import OPSET, ParityError, export_graph, verify_parity
from .inputs import check_mimi_folder

NUM_CODEBOOKS = 8  # the Talker predicts Mimi's first 8 codebooks


def load_mimi(folder: str | Path) -> MimiModel:
    """Load an HF Mimi folder (kyutai/mimi layout: config.json + model.safetensors), in eval mode."""
    folder = check_mimi_folder(folder)
    mimi, info = MimiModel.from_pretrained(folder, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k.startswith(("decoder.", "quantizer."))]
    if missing:
        raise ValueError(f"{folder} lacks {len(missing)} decoder weights (e.g. {missing[:3]}); "
                         f"the checkpoint is incomplete or not a Mimi checkpoint")
    return mimi.eval()


def _left_context(conv: MimiConv1d) -> int:
    """Inputs a stride-1 causal conv needs before the current one: its causal zero padding."""
    return (conv.conv.kernel_size[0] - 1) * conv.conv.dilation[0]


def _stateful(mimi: MimiModel) -> list[nn.Module]:
    """The layers that carry state across frames, in the order MimiStreamStep consumes their states."""
    dec = mimi.decoder
    return [m for m in (dec.upsample, *dec.decoder_seanet.modules())
            if (isinstance(m, MimiConv1d) and _left_context(m) > 0)
            or (isinstance(m, MimiConvTranspose1d) and m.padding_right > 0)]


def _state_shape(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, MimiConv1d):
        return layer.conv.in_channels, _left_context(layer)
    return layer.conv.out_channels, layer.padding_right  # overlap tail of a causal convtr: K - S


def mimi_dims(mimi: MimiModel) -> MimiDims:
    """The runtime dims of `mimi`'s streaming decoder; raises ValueError if the config cannot stream exactly."""
    c = mimi.config
    problems = []
    if not c.use_causal_conv or c.trim_right_ratio != 1.0 or c.pad_mode != "constant":
        problems.append("convolutions must be causal, zero-padded and right-trimmed (use_causal_conv=True, "
                        "pad_mode='constant', trim_right_ratio=1.0)")
    if mimi.decoder is None or mimi.decoder.upsample is None:
        problems.append("the model needs a decoder with an upsampling layer (frame_rate < encodec_frame_rate)")
    elif any(isinstance(m, MimiConv1d) and m.conv.stride[0] != 1 for m in mimi.decoder.decoder_seanet.modules()):
        problems.append("decoder convolutions must have stride 1")
    if c.sliding_window is None:
        problems.append("sliding_window must be set (it bounds the KV ring)")
    if c.num_key_value_heads != c.num_attention_heads:
        problems.append("grouped-query attention is not supported (num_key_value_heads != num_attention_heads)")
    if c.num_quantizers < NUM_CODEBOOKS or c.codebook_size != 2048:
        problems.append(f"need >= {NUM_CODEBOOKS} quantizers of 2048 codes")
    if problems:
        raise ValueError("this Mimi config cannot be exported as an exact streaming decoder: " + "; ".join(problems))
    steps = c.latent_stride
    return MimiDims(
        num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads, head_dim=c.head_dim,
        kv_window=c.sliding_window, conv_states=tuple(_state_shape(m) for m in _stateful(mimi)),
        num_codebooks=NUM_CODEBOOKS, codebook_size=c.codebook_size,
        frame_samples=steps * math.prod(c.upsampling_ratios), sample_rate=c.sampling_rate, steps_per_frame=steps,
    )


class MimiStreamStep(nn.Module):
    """One frame of exact streaming Mimi decoding, inputs and outputs in `mimi_decoder_spec` order."""

    def __init__(self, mimi: MimiModel):
        super().__init__()
        self.dims = mimi_dims(mimi)
        self.quantizer = mimi.quantizer
        self.upsample = mimi.decoder.upsample
        self.transformer = mimi.decoder.decoder_transformer
        self.seanet = mimi.decoder.decoder_seanet

    def forward(self, codes: torch.Tensor, position: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_kv = 2 * self.dims.num_layers
        past_kv, past_conv = state[:n_kv], iter(state[n_kv:])
        new_conv: list[torch.Tensor] = []
        x = self.quantizer.decode(codes)  # [1, E, 1]
        x = self._convtr(self.upsample, x, past_conv, new_conv)  # [1, E, steps]
        x, new_kv = self._transformer(x.transpose(1, 2), position, past_kv)
        x = x.transpose(1, 2)
        for layer in self.seanet.layers:
            x = self._layer(layer, x, past_conv, new_conv)
        assert next(past_conv, None) is None and len(new_conv) == len(self.dims.conv_states), len(new_conv)
        return (x, *new_kv, *new_conv)

    def _transformer(self, x: torch.Tensor, position: torch.Tensor, past_kv: tuple[torch.Tensor, ...]):
        window, steps = self.dims.kv_window, x.shape[1]
        q_pos = position + torch.arange(steps)  # [T]
        slot = torch.arange(window)
        # ring slot s holds the latest position p < `position` with p % window == s; p < 0 means empty
        slot_pos = position - 1 - torch.remainder(position + window - 1 - slot, window)  # [W]
        past_ok = (slot_pos[None] >= 0) & (slot_pos[None] > q_pos[:, None] - window)  # [T, W]
        new_ok = (q_pos[None] <= q_pos[:, None]) & (q_pos[None] > q_pos[:, None] - window)  # [T, T]
        visible = torch.cat([past_ok, new_ok], -1)  # [T, W + T]
        mask = torch.where(visible, 0.0, torch.finfo(x.dtype).min)
        cos, sin = self.transformer.rotary_emb(x, q_pos[None])
        new_kv: list[torch.Tensor] = []
        for i, layer in enumerate(self.transformer.layers):
            x, k, v = self._layer_step(layer, x, cos, sin, past_kv[2 * i], past_kv[2 * i + 1], mask)
            new_kv += [k, v]
        return x, new_kv

    @staticmethod
    def _layer_step(layer: MimiTransformerLayer, x, cos, sin, k_past, v_past, mask):
        """MimiTransformerLayer.forward over ring + new keys. Scores are split, not concatenated, along the keys
        so the ring is never copied."""
        attn, steps, window = layer.self_attn, x.shape[1], k_past.shape[2]
        h = layer.input_layernorm(x)
        shape = (1, steps, -1, attn.head_dim)
        q = attn.q_proj(h).view(shape).transpose(1, 2)  # [1, H, T, D]
        k = attn.k_proj(h).view(shape).transpose(1, 2)
        v = attn.v_proj(h).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = torch.cat([q @ k_past.transpose(2, 3), q @ k.transpose(2, 3)], -1) * attn.scaling + mask
        probs = scores.softmax(-1)  # [1, H, T, W + T]
        out = probs[..., :window] @ v_past + probs[..., window:] @ v
        out = attn.o_proj(out.transpose(1, 2).reshape(1, steps, -1))
        x = x + layer.self_attn_layer_scale(out)
        x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
        return x, k, v

    def _layer(self, layer: nn.Module, x, past: Iterator[torch.Tensor], new: list[torch.Tensor]):
        if isinstance(layer, MimiConv1d):
            if _left_context(layer) == 0:
                return layer.conv(x)
            full = torch.cat([next(past), x], -1)  # left context replaces the causal zero padding
            new.append(full[..., x.shape[-1]:])
            return layer.conv(full)
        if isinstance(layer, MimiConvTranspose1d):
            return self._convtr(layer, x, past, new)
        if isinstance(layer, MimiResnetBlock):
            h = x
            for sub in layer.block:
                h = self._layer(sub, h, past, new)
            return self._layer(layer.shortcut, x, past, new) + h
        if isinstance(layer, nn.ELU) and layer.alpha == 1.0:
            return _elu(x)
        return layer(x)  # Identity

    @staticmethod
    def _convtr(layer: MimiConvTranspose1d, x, past: Iterator[torch.Tensor], new: list[torch.Tensor]):
        """Overlap-add: the full decode's right trim is exactly the tail the next frame adds onto its start."""
        tail = layer.padding_right
        y = layer.conv(x)  # [1, C, T * S + tail]
        y = torch.cat([y[..., :tail] + next(past), y[..., tail:]], -1)
        keep = y.shape[-1] - tail
        rest = y[..., keep:]
        new.append(rest if layer.conv.bias is None else rest - layer.conv.bias[:, None])  # bias is added once
        return y[..., :keep]


def _elu(x: torch.Tensor) -> torch.Tensor:
    """ELU (alpha 1) as max(x, exp(min(x, 0)) - 1): e^x - 1 >= x everywhere, so this is x above 0 and e^x - 1 below.
    onnxruntime's Elu kernel is scalar: these four vectorized ops take half its time (full-size frame: 13 ELUs over
    up to 64 x 1920 values per frame), within 6e-8 of it."""
    return torch.maximum(x, torch.exp(torch.clamp(x, max=0.0)) - 1.0)


def _example_inputs(dims: MimiDims, frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs mid-answer (past the window), so onnxsim's own check sees non-trivial state."""
    gen = torch.Generator().manual_seed(seed)
    feeds = {t.name: 0.1 * torch.randn(t.dims, generator=gen) for t in mimi_decoder_spec(dims).inputs[1:]}
    feeds["codes"] = torch.randint(0, dims.codebook_size, (1, dims.num_codebooks, frames), generator=gen)
    feeds["position"] = torch.tensor([2 * dims.kv_window + dims.steps_per_frame])
    return feeds


def export(mimi: MimiModel, out_path: str | Path, frames_per_call: int | None = None) -> Path:
    """Write the `mimi_decoder` graph (fp32, opset 17) with its dims stamped into the ONNX metadata.
    `frames_per_call`: None for any number (traced on 3, so no shape is specialised to one), 1 for a static bundle."""
    step = MimiStreamStep(mimi).eval()
    spec = mimi_decoder_spec(step.dims, frames_per_call)
    out = export_graph(step, _example_inputs(step.dims, frames_per_call or 3), spec, out_path)
    model = onnx.load(str(out))
    meta = {"graph": spec.graph, "contract_version": str(spec.version), "opset": str(OPSET), "precision": "fp32",
            "mimi_dims": json.dumps(step.dims.to_dict())}
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(out))
    return out


def _torch_step(step: MimiStreamStep, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    spec = mimi_decoder_spec(step.dims)
    with torch.no_grad():
        outs = step(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
    return {t.name: o.numpy() for t, o in zip(spec.outputs, outs)}


def verify(mimi: MimiModel, onnx_path: str | Path, frames: int | None = None, seed: int = 0,
           frames_per_call: int | None = None) -> dict[str, float]:
    """Check the graph on random codes: per call against `MimiStreamStep` (every output), and the streamed audio
    against `MimiModel.decode` of all frames at once ("stream"), decoding one frame per call and, when the graph
    takes any number (`frames_per_call` None, as `export`), again in calls of 3, 1, 2 and the most frames a call
    takes. Default length crosses the sliding window. Returns the max abs difference per output and for "stream";
    raises one ParityError listing the failures."""
    step = MimiStreamStep(mimi).eval()
    dims, spec = step.dims, mimi_decoder_spec(step.dims, frames_per_call)
    frames = frames or dims.kv_window // dims.steps_per_frame + 4
    codes = np.random.default_rng(seed).integers(0, dims.codebook_size, (dims.num_codebooks, frames))
    decoder = MimiStreamDecoder(GraphSession(Path(onnx_path), spec), dims)
    worst = dict.fromkeys([t.name for t in spec.outputs] + ["stream"], 0.0)
    failures: list[str] = []  # the first failing call is enough to diagnose; later ones follow from it
    with torch.no_grad():
        full = mimi.decode(torch.from_numpy(codes[None])).audio_values.numpy().reshape(-1)
    for sizes in [(1,)] + ([] if frames_per_call else [(3, 1, 2, decoder.max_frames)]):
        state, audio, f = decoder.initial_state(), [], 0
        for k in itertools.cycle(sizes):
            if f >= frames:
                break
            feeds = decoder.feeds(codes[:, f:f + k], state)
            got = decoder.session.run(feeds)
            try:
                for name, d in verify_parity(spec, _torch_step(step, feeds), got,
                                             label=f"frames {f}..{f + k - 1}").items():
                    worst[name] = max(worst[name], d)
            except ParityError as e:
                failures = failures or [str(e)]
            pcm, state = decoder.advance(state, got)
            audio.append(pcm)
            f += feeds["codes"].shape[-1]
        diff = float(np.abs(np.concatenate(audio) - full).max())
        worst["stream"] = max(worst["stream"], diff)
        if not diff <= spec.atol:
            failures.append(f"{frames} frames streamed in calls of {'/'.join(map(str, sizes))} frames differ from "
                            f"MimiModel.decode of all frames at once: max diff {diff:.3g} > {spec.atol:g}")
    if failures:
        raise ParityError("\n".join(failures))
    return worst
