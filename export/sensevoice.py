"""SenseVoice-Small: our torch SANM encoder + CTC head, loaded from the released funasr folder, exported to ONNX.

Upstream (MiniMind-O `load_sensevoice`) runs funasr's `SenseVoiceEncoderSmall` on the front end's features with no
prompt frames and feeds its `tp_norm` output to the audio projector. This module re-implements that encoder from
its published structure (see the reference spec, section 4) with the checkpoint's own key names, so funasr is
never needed to export:

    x = features * sqrt(512) + sinusoidal PE (depth 560, positions 1..T)
    -> encoders0: 1 SANM layer 560->512 (no attention residual) -> encoders: 49 SANM -> after_norm
    -> tp_encoders: 20 SANM -> tp_norm                                  = encoder_out [1, T, 512]
    -> ctc.ctc_lo                                                        = ctc_logits  [1, T, vocab]

SANM layer: pre-LN -> fused q/k/v -> masked softmax attention (4 heads) + FSMN memory (depthwise conv over the
masked values, plus the values) -> linear_out on the attention part -> residual -> pre-LN ReLU FFN -> residual.

The export is shaped for onnxruntime's CPU kernels (same maths, checked by `verify`): the layers run on [T, 512]
rows, so each Linear is one Gemm (int8: one DynamicQuantizeMatMul) with no Reshape pair, and the FSMN memory is
one 2-D convolution with the `+ values` in its centre tap. Full size, int8: 2538 -> 1912 nodes, 6 s of speech
~18 % faster (2 threads). Not taken, slower here: onnxruntime's MultiHeadAttention and SkipLayerNormalization.

The bundle also gets the front end's CMVN (from `am.mvn`), the prompt-query embeddings (`embed.weight`, used
only for transcripts, where SenseVoice expects 4 query rows before the speech) and the CTC vocabulary (from the
SentencePiece model), so the runtime needs neither torch nor sentencepiece.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omni_onnx.contracts import sensevoice_spec
from omni_onnx.speech import CMVN_FILE, QUERIES_FILE, VOCAB_FILE, FrontendOptions, parse_am_mvn
from torch import Tensor, nn

from .common import export_graph, verify_graph
from .inputs import SenseVoiceFolder, resolve_folder

FILENAME = "sensevoice.onnx"
VERIFY_SECONDS = (1.0, 6.0, 20.0)
FRAMES_PER_SECOND = 100 / 6  # LFR rows per second of 16 kHz audio (10 ms hop, 6 frames per row)


@dataclass(frozen=True)
class SenseVoiceConfig:
    """The `encoder_conf` of a funasr SenseVoiceSmall `config.yaml` (defaults: the released model)."""

    input_size: int = 560  # 80 mel x lfr_m 7
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50  # encoders0 (1) + encoders (num_blocks - 1)
    tp_blocks: int = 20
    kernel_size: int = 11
    sanm_shfit: int = 0  # (sic, funasr's spelling) extra left padding of the FSMN memory
    vocab_size: int = 25055
    num_queries: int = 16  # rows of `embed` (language / event / emotion / text-norm prompts)

    @classmethod
    def from_yaml(cls, conf: dict[str, Any], vocab_size: int, num_queries: int) -> SenseVoiceConfig:
        enc = conf.get("encoder_conf") or {}
        if conf.get("encoder") != "SenseVoiceEncoderSmall":
            raise ValueError(f"config.yaml names encoder {conf.get('encoder')!r}; only SenseVoiceEncoderSmall "
                             f"(FunAudioLLM/SenseVoiceSmall) is supported")
        if not enc.get("normalize_before", True) or enc.get("concat_after", False):
            raise ValueError("config.yaml sets normalize_before=false or concat_after=true; SenseVoiceSmall uses "
                             "pre-LN without concat_after, and no other variant is supported")
        known = {f.name for f in fields(cls)} - {"input_size", "vocab_size", "num_queries"}
        front = conf.get("frontend_conf") or {}  # funasr sets input_size to the front end's output size
        return cls(input_size=int(front.get("n_mels", 80)) * int(front.get("lfr_m", 1)),
                   vocab_size=vocab_size, num_queries=num_queries,
                   **{k: int(v) for k, v in enc.items() if k in known})


# --- the torch module (key names follow the funasr checkpoint) ---


class _FSMNMemory(torch.autograd.Function):
    """(depthwise conv(v * keep) + v * keep) * keep over time, v [T,C], keep [T,1], weight [C,1,K].

    Exported with the `+ v * keep` folded into the kernel's centre tap, as a 2-D convolution on [1,C,T,1]:
    onnxruntime runs that in its blocked-channel layout, absorbing the two transposes, where the 1-D depthwise
    convolution loops over the 512 channels one by one."""

    @staticmethod
    def forward(ctx, v: Tensor, keep: Tensor, weight: Tensor, left: int, right: int) -> Tensor:
        kept = v * keep
        memory = F.conv1d(F.pad(kept.T[None], (left, right)), weight, groups=weight.shape[0])
        return (memory[0].T + kept) * keep

    @staticmethod
    def symbolic(g, v, keep, weight, left, right):
        channels = weight.type().sizes()[0]
        centre = torch.zeros(1, 1, left + right + 1, 1)
        centre[..., left, :] = 1.0
        kernel = g.op("Add", g.op("Unsqueeze", weight, g.op("Constant", value_t=torch.tensor([3]))),
                      g.op("Constant", value_t=centre))
        kept = g.op("Mul", v, keep)
        rows = g.op("Reshape", kept, g.op("Constant", value_t=torch.tensor([1, -1, 1, channels])))
        conv = g.op("Conv", g.op("Transpose", rows, perm_i=[0, 3, 1, 2]), kernel, group_i=channels,
                    kernel_shape_i=[left + right + 1, 1], pads_i=[left, 0, right, 0])
        back = g.op("Reshape", g.op("Transpose", conv, perm_i=[0, 2, 3, 1]),
                    g.op("Constant", value_t=torch.tensor([-1, channels])))
        return g.op("Mul", back, keep).setType(v.type())


class FSMNAttention(nn.Module):
    """funasr's MultiHeadedAttentionSANM: masked multi-head attention plus the FSMN memory over the values."""

    def __init__(self, in_size: int, size: int, heads: int, kernel_size: int, shift: int):
        super().__init__()
        self.heads, self.d_k = heads, size // heads
        self.linear_q_k_v = nn.Linear(in_size, 3 * size)
        self.linear_out = nn.Linear(size, size)
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        left = (kernel_size - 1) // 2 + shift
        self.pad = (left, kernel_size - 1 - left)

    def forward(self, x: Tensor, keep: Tensor, key_bias: Tensor) -> Tensor:
        """x [T,in]; keep [T,1] float (1 real row, 0 padding); key_bias [1,1,T] (0 or -inf)."""
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)
        memory = _FSMNMemory.apply(v, keep, self.fsmn_block.weight, *self.pad)

        def heads(z: Tensor) -> Tensor:
            return z.reshape(-1, self.heads, self.d_k).transpose(0, 1)

        scores = torch.matmul(heads(q) * self.d_k ** -0.5, heads(k).transpose(-2, -1)) + key_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), heads(v))
        return self.linear_out(context.transpose(0, 1).reshape(-1, self.heads * self.d_k)) + memory


class FeedForward(nn.Module):
    def __init__(self, size: int, hidden: int):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(size, hidden), nn.Linear(hidden, size)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class SANMLayer(nn.Module):
    """Pre-LN SANM block; the first layer (in_size != size) has no residual around the attention."""

    def __init__(self, in_size: int, cfg: SenseVoiceConfig):
        super().__init__()
        size = cfg.output_size
        self.residual = in_size == size
        self.norm1, self.norm2 = nn.LayerNorm(in_size), nn.LayerNorm(size)
        self.self_attn = FSMNAttention(in_size, size, cfg.attention_heads, cfg.kernel_size, cfg.sanm_shfit)
        self.feed_forward = FeedForward(size, cfg.linear_units)

    def forward(self, x: Tensor, keep: Tensor, key_bias: Tensor) -> Tensor:
        attn = self.self_attn(self.norm1(x), keep, key_bias)
        x = x + attn if self.residual else attn
        return x + self.feed_forward(self.norm2(x))


class SenseVoiceEncoder(nn.Module):
    def __init__(self, cfg: SenseVoiceConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders0 = nn.ModuleList([SANMLayer(cfg.input_size, cfg)])
        self.encoders = nn.ModuleList([SANMLayer(cfg.output_size, cfg) for _ in range(cfg.num_blocks - 1)])
        self.after_norm = nn.LayerNorm(cfg.output_size)
        self.tp_encoders = nn.ModuleList([SANMLayer(cfg.output_size, cfg) for _ in range(cfg.tp_blocks)])
        self.tp_norm = nn.LayerNorm(cfg.output_size)
        half = cfg.input_size // 2
        inv = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
        self.register_buffer("inv_timescales", inv, persistent=False)

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        """features [1,T,560] (front end output), mask [1,T] bool -> tp_norm output [1,T,512].

        The layers work on the clip's [T, size] rows: every Linear then exports as one 2-D Gemm, without the
        Reshape pair a 3-D MatMul + Add gets from onnxsim (560 of the graph's nodes)."""
        if features.shape[0] != 1 or mask.shape[0] != 1:
            raise ValueError(f"SenseVoiceEncoder takes one clip (batch 1), got features {tuple(features.shape)} "
                             f"and mask {tuple(mask.shape)}; run clips one at a time")
        t = features.shape[1]
        pos = torch.arange(1, t + 1, dtype=torch.float32, device=features.device)[:, None] * self.inv_timescales
        x = features[0] * self.cfg.output_size ** 0.5 + torch.cat([torch.sin(pos), torch.cos(pos)], dim=-1)
        keep = mask[0].to(x.dtype)[:, None]
        key_bias = torch.where(mask, 0.0, float("-inf"))[:, None, :]
        for layer in self.encoders0:
            x = layer(x, keep, key_bias)
        for layer in self.encoders:
            x = layer(x, keep, key_bias)
        x = self.after_norm(x)
        for layer in self.tp_encoders:
            x = layer(x, keep, key_bias)
        return self.tp_norm(x)[None]


class CTCHead(nn.Module):
    def __init__(self, size: int, vocab_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(size, vocab_size)


class SenseVoiceSmall(nn.Module):
    """The checkpoint's modules we use: `encoder`, `ctc.ctc_lo` and the prompt-query table `embed`."""

    def __init__(self, cfg: SenseVoiceConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SenseVoiceEncoder(cfg)
        self.ctc = CTCHead(cfg.output_size, cfg.vocab_size)
        self.embed = nn.Embedding(cfg.num_queries, cfg.input_size)

    def forward(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The sensevoice_spec outputs: (encoder_out, ctc_logits)."""
        h = self.encoder(features, mask)
        return h, self.ctc.ctc_lo(h)


# --- the released folder ---


def _state_dict(path: Path) -> dict[str, Tensor]:
    """model.pt as funasr's loader reads it: a state dict, possibly wrapped, possibly with DDP's 'module.'."""
    from .checkpoint import torch_load
    state = torch_load(path, "SenseVoice weights", "restore model.pt from FunAudioLLM/SenseVoiceSmall")
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


def frontend_options(config: dict[str, Any]) -> FrontendOptions:
    """The runtime front end for this folder; raises if config.yaml asks for a front end the runtime lacks."""
    conf = config.get("frontend_conf") or {}
    if config.get("frontend", "WavFrontend") != "WavFrontend":
        raise ValueError(f"config.yaml names front end {config.get('frontend')!r}; only WavFrontend is supported")
    opts = FrontendOptions()
    wanted = {"sample_rate": conf.get("fs", 16000), "window": conf.get("window", "hamming"),
              "n_mels": conf.get("n_mels", 80), "frame_length_ms": conf.get("frame_length", 25),
              "frame_shift_ms": conf.get("frame_shift", 10), "lfr_m": conf.get("lfr_m", 1),
              "lfr_n": conf.get("lfr_n", 1), "snip_edges": conf.get("snip_edges", True)}
    differ = {k: v for k, v in wanted.items() if v != getattr(opts, k)}
    if differ:
        raise ValueError(f"config.yaml's frontend_conf differs from the runtime's SenseVoice front end: {differ} "
                         f"(runtime: {opts}); only the released SenseVoiceSmall front end is supported")
    return opts


def load_vocab(tokenizer: Path) -> list[str]:
    """The SentencePiece model's pieces in id order (the CTC head's classes)."""
    from google.protobuf.message import DecodeError
    from transformers.utils import sentencepiece_model_pb2_new as spm_pb2

    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(tokenizer.read_bytes())
    except DecodeError:
        raise ValueError(f"{tokenizer} is not a SentencePiece model (it does not parse); restore it from "
                         f"FunAudioLLM/SenseVoiceSmall") from None
    if not proto.pieces:
        raise ValueError(f"{tokenizer} holds no pieces; restore it from FunAudioLLM/SenseVoiceSmall")
    return [p.piece for p in proto.pieces]


def load_sensevoice(folder: str | Path) -> tuple[SenseVoiceSmall, SenseVoiceFolder]:
    """Our module with the folder's weights (fp32, eval). Every encoder/CTC/embed key must be present."""
    info = resolve_folder(folder)
    frontend_options(info.config)
    state = _state_dict(info.weights)
    for key in ("ctc.ctc_lo.weight", "embed.weight"):
        if key not in state:
            raise ValueError(f"{info.weights} has no {key}; it is not a SenseVoiceSmall checkpoint")
    cfg = SenseVoiceConfig.from_yaml(info.config, vocab_size=state["ctc.ctc_lo.weight"].shape[0],
                                     num_queries=state["embed.weight"].shape[0])
    model = SenseVoiceSmall(cfg)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    wrong = sorted(k for k in ours if k in state and state[k].shape != ours[k].shape)
    if missing or wrong:
        raise ValueError(f"{info.weights} does not match its config.yaml ({cfg}): missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, wrong shapes {wrong[:5]}; use the matching pair "
                         f"from FunAudioLLM/SenseVoiceSmall")
    model.load_state_dict({k: state[k].float() for k in ours})
    return model.eval(), info


# --- export, bundle files, parity ---


def dummy_inputs(cfg: SenseVoiceConfig, frames: int, padding: int = 0, seed: int = 0) -> dict[str, Tensor]:
    """Random CMVN-scale features; the last `padding` rows are masked out."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, frames, dtype=torch.bool)
    if padding:
        mask[:, frames - padding:] = False
    return {"features": torch.randn(1, frames, cfg.input_size, generator=g), "mask": mask}


def export(model: SenseVoiceSmall, out_dir: str | Path) -> Path:
    """Write `out_dir/sensevoice.onnx` (dynamic frame count, weights inside)."""
    return export_graph(model, dummy_inputs(model.cfg, 23, padding=3), sensevoice_spec(
        model.cfg.vocab_size, model.cfg.output_size, model.cfg.input_size), Path(out_dir) / FILENAME)


def write_bundle_files(model: SenseVoiceSmall, info: SenseVoiceFolder, out_dir: str | Path) -> list[str]:
    """Write the runtime's side files (CMVN, prompt queries, vocabulary) into `out_dir`; returns their names
    relative to it, for the manifest's "files"."""
    out = Path(out_dir)
    cmvn = parse_am_mvn(info.cmvn.read_text(encoding="utf-8"), source=str(info.cmvn))
    if cmvn.shape[1] != model.cfg.input_size:
        raise ValueError(f"{info.cmvn} has {cmvn.shape[1]} dims, the encoder takes {model.cfg.input_size}")
    vocab = load_vocab(info.tokenizer)
    if len(vocab) != model.cfg.vocab_size:
        raise ValueError(f"{info.tokenizer} has {len(vocab)} pieces but the CTC head has {model.cfg.vocab_size} "
                         f"classes; use the tokenizer released with this model.pt")
    np.save(out / CMVN_FILE, cmvn)
    np.save(out / QUERIES_FILE, model.embed.weight.detach().float().numpy())
    (out / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return [CMVN_FILE, QUERIES_FILE, VOCAB_FILE]


def frames_for_seconds(seconds: float) -> int:
    """LFR rows for `seconds` of 16 kHz audio (ceil(F / 6), F = 1 + (N - 400) // 160)."""
    n = round(seconds * 16000)
    return math.ceil((1 + (n - 400) // 160) / 6)


def verify(model: SenseVoiceSmall, path: str | Path,
           seconds: Sequence[float] = VERIFY_SECONDS) -> dict[str, dict[str, float]]:
    """ONNX vs the module at each length (plus a padded case at the first length); raises ParityError."""
    cases = []
    for n, s in enumerate(seconds):
        frames = frames_for_seconds(s)
        cases.append((f"{s:g} s ({frames} frames)", dummy_inputs(model.cfg, frames, seed=100 + n)))
    frames = frames_for_seconds(seconds[0]) + 5
    cases.append((f"{seconds[0]:g} s + 5 padded frames", dummy_inputs(model.cfg, frames, padding=5, seed=99)))
    spec = sensevoice_spec(model.cfg.vocab_size, model.cfg.output_size, model.cfg.input_size)
    with torch.no_grad():
        runs = [(label, feeds, dict(zip(("encoder_out", "ctc_logits"), model(**feeds)))) for label, feeds in cases]
    return verify_graph(path, spec, runs)
