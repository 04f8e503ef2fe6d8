"""Torch reference modules for MiniMind-O's Thinker, Talker and projectors, written from the reference spec.

`OmniTorchModel.state_dict()` has exactly upstream `MiniMindOmni`'s keys and shapes, so released checkpoints load
strictly. The forward passes reproduce upstream's fp32 numerics (max abs error ~3e-6 against upstream's
`MiniMindOmni` at full size) and are written to trace into lean ONNX: no Python branch depends on tensor values or on
the past length, attention never copies the KV cache (see `Attention`), projections that share an input export as
one MatMul (`shared_input_linears`), and MoE traces every expert and keeps the top-1
one with a one-hot (exact: upstream's top-1 weight p/(p+1e-20) is 1.0 in fp32); the export then moves each expert
into an If branch, so a graph runs only the experts its positions chose (moe_branches.py).

Shapes: batch 1; `seq` new positions after `past_seq` cached ones; KV caches are upstream's
`[1, positions, kv_heads, head_dim]`, K stored after k_norm and RoPE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omni_onnx.config import ModelConfig

KV = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class BlockDims:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    experts: int  # 0: dense SwiGLU FFN

    @classmethod
    def thinker(cls, cfg: ModelConfig) -> BlockDims:
        return cls(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                   cfg.intermediate_size, cfg.rms_norm_eps, cfg.num_experts if cfg.use_moe else 0)

    @classmethod
    def talker(cls, cfg: ModelConfig) -> BlockDims:
        return cls(cfg.talker_hidden_size, cfg.talker_num_attention_heads, cfg.talker_num_key_value_heads,
                   cfg.talker_head_dim, cfg.talker_intermediate_size, cfg.rms_norm_eps,
                   cfg.num_experts if cfg.use_moe else 0)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # upstream normalises in fp32 whatever the weight dtype
        return (self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))).type_as(x)


def rope_inv_freq(head_dim: int, theta: float) -> Tensor:
    """Upstream's fp32 inverse frequencies [head_dim/2] (no YaRN: upstream never enables it)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))


def rope_cos_sin(inv_freq: Tensor, start: int | Tensor, length: int | Tensor) -> tuple[Tensor, Tensor]:
    """cos/sin [length, head_dim] for absolute positions start..start+length-1.

    Computed on the fly (same fp32 products as upstream's precomputed table) so graphs carry no 25 MB table.
    """
    angles = (start + torch.arange(length, device=inv_freq.device)).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """NeoX rotation of x [seq, heads, head_dim]: x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def shared_input_linears(x: Tensor, linears: list[nn.Linear]) -> list[Tensor]:
    """x through bias-free Linears that share it. In an ONNX export they become one MatMul on the stacked weights
    (the exporter folds the stacking into one initializer), so a decode step quantizes x once and runs one int8
    MatMul instead of one per projection; eager torch runs them apart (stacking there would copy the weights on
    every call). Export parity checks compare the two forms."""
    if torch.onnx.is_in_onnx_export():
        packed = F.linear(x, torch.cat([lin.weight for lin in linears]))
        return list(packed.split([lin.out_features for lin in linears], dim=-1))
    return [lin(x) for lin in linears]


def causal_mask(seq: int | Tensor, rep: int, device: torch.device) -> Tensor:
    """Additive mask [seq * rep, seq] among the new positions, one row per (position, query head of a kv group)
    pair, the attention's score layout (every cached position is visible to all of them)."""
    rows = torch.arange(seq * rep, device=device) // rep
    cols = torch.arange(seq, device=device)
    # masked_fill keeps the zeros' float32 (a traced torch.where on Python floats is float64 in the graph)
    return torch.zeros(seq * rep, seq, device=device).masked_fill(cols[None, :] > rows[:, None], float("-inf"))


@dataclass(frozen=True)
class StackContext:
    """Per-call tensors shared by every layer of a stack (built once, so the graph computes them once)."""
    cos: Tensor  # [seq, head_dim]
    sin: Tensor
    mask: Tensor  # [seq * rep, seq]: see causal_mask
    past_len: int | Tensor  # cache positions each layer reads
    stale: Tensor | None = None  # bool [past_len], True = cache slot not filled yet (static graphs' fixed buffer)

    @classmethod
    def build(cls, inv_freq: Tensor, past_seq: int | Tensor, seq: int | Tensor, rep: int) -> StackContext:
        cos, sin = rope_cos_sin(inv_freq, past_seq, seq)
        return cls(cos, sin, causal_mask(seq, rep, inv_freq.device), past_seq)


class Attention(nn.Module):
    """GQA self-attention over the cache plus the new positions (batch 1, as every graph contract).

    Layout choices keep decode free of cache-sized copies: K/V stay [positions, kv_heads, head_dim] and the permutes
    feeding the matmuls fold into MatMul strides (ORT FusedMatMul transBatch); past and new keys are scored
    separately and joined only as scores, so the cache is never concatenated; query heads are grouped per kv head
    instead of repeating K/V. Measured alternative: onnxruntime's GroupQueryAttention on a shared, IO-bound
    [1, kv_heads, capacity, head_dim] buffer cut the full-size int8 step by ~0.3 ms (Thinker 2.95 -> 2.72, Talker
    1.91 -> 1.82 ms) but changes the cache layout every caller of the dynamic graphs relies on (not taken yet).
    """

    def __init__(self, d: BlockDims):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = d.heads, d.kv_heads, d.head_dim
        self.q_proj = nn.Linear(d.hidden, d.heads * d.head_dim, bias=False)
        self.k_proj = nn.Linear(d.hidden, d.kv_heads * d.head_dim, bias=False)
        self.v_proj = nn.Linear(d.hidden, d.kv_heads * d.head_dim, bias=False)
        self.o_proj = nn.Linear(d.heads * d.head_dim, d.hidden, bias=False)
        self.q_norm = RMSNorm(d.head_dim, d.eps)
        self.k_norm = RMSNorm(d.head_dim, d.eps)

    def forward(self, x: Tensor, ctx: StackContext, past: KV | None) -> tuple[Tensor, KV]:
        """x [1, seq, hidden] -> (out [1, seq, hidden], this call's (k, v) [1, seq, kv_heads, head_dim])."""
        # Every reshape below has constant dims (or one -1) and the mask and cache length come from ctx: per-layer
        # shape arithmetic is a handful of tiny nodes per layer, and the decode step pays for each node it runs.
        kvh, rep, d = self.kv_heads, self.heads // self.kv_heads, self.head_dim
        scale = math.sqrt(d)
        q, k, v = shared_input_linears(x, [self.q_proj, self.k_proj, self.v_proj])
        qk = torch.cat([self.q_norm(q.view(-1, self.heads, d)), self.k_norm(k.view(-1, kvh, d))], dim=1)
        qk = apply_rope(qk, ctx.cos, ctx.sin)  # one rotation for the query and key heads
        q, k, v = qk[:, :self.heads], qk[:, self.heads:], v.view(-1, kvh, d)
        # query head j = g*rep + r reads kv head g; group g's rows are (position, r)
        qg = q.reshape(-1, kvh, rep, d).transpose(0, 1).reshape(kvh, -1, d)  # [kv_heads, seq * rep, d]
        scores = torch.matmul(qg, k.permute(1, 2, 0)) / scale + ctx.mask
        if past is not None:
            pk, pv = past[0].flatten(0, 1), past[1].flatten(0, 1)  # [past_seq, kv_heads, d]
            old = torch.matmul(qg, pk.permute(1, 2, 0)) / scale
            if ctx.stale is not None:
                old = old.masked_fill(ctx.stale, float("-inf"))
            scores = torch.cat([old, scores], dim=-1)
        probs = F.softmax(scores.float(), dim=-1).type_as(q)  # [kv_heads, seq * rep, past_seq + seq]
        p = ctx.past_len if past is not None else 0
        out = torch.matmul(probs[..., p:], v.transpose(0, 1))  # [kv_heads, seq * rep, d]
        if past is not None:
            out = torch.matmul(probs[..., :p], pv.transpose(0, 1)) + out
        out = out.view(kvh, -1, rep, d).transpose(0, 1).reshape(1, -1, self.heads * d)
        return self.o_proj(out), (k[None], v[None])


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = shared_input_linears(x, [self.gate_proj, self.up_proj])
        return self.down_proj(F.silu(gate) * up)


class TopOneMoE(nn.Module):
    """Upstream's top-1 MoE. All experts run here; a one-hot of the argmax keeps one (exact, see module docstring).
    Exported graphs run only the chosen experts (moe_branches.py rewrites this traced form)."""

    def __init__(self, d: BlockDims):
        super().__init__()
        self.gate = nn.Linear(d.hidden, d.experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d.hidden, d.intermediate) for _ in range(d.experts))

    def forward(self, x: Tensor) -> Tensor:
        choice = F.softmax(self.gate(x), dim=-1).argmax(-1, keepdim=True)  # [1, seq, 1]
        onehot = (choice == torch.arange(len(self.experts), device=x.device)).to(x.dtype)  # [1, seq, experts]
        out = self.experts[0](x) * onehot[..., 0:1]
        for e in range(1, len(self.experts)):
            out = out + self.experts[e](x) * onehot[..., e:e + 1]
        return out


class Block(nn.Module):
    def __init__(self, d: BlockDims):
        super().__init__()
        self.self_attn = Attention(d)
        self.input_layernorm = RMSNorm(d.hidden, d.eps)
        self.post_attention_layernorm = RMSNorm(d.hidden, d.eps)
        self.mlp = TopOneMoE(d) if d.experts else SwiGLU(d.hidden, d.intermediate)

    def forward(self, x: Tensor, ctx: StackContext, past: KV | None) -> tuple[Tensor, KV]:
        a, kv = self.self_attn(self.input_layernorm(x), ctx, past)
        h = x + a
        return h + self.mlp(self.post_attention_layernorm(h)), kv


def run_blocks(layers: nn.ModuleList, x: Tensor, inv_freq: Tensor, past: list[KV] | None,
               tap: int = -1, ctx: StackContext | None = None) -> tuple[Tensor, Tensor, list[KV]]:
    """Run a block stack from position past_seq on (or as `ctx` says). Returns (output, output of layer `tap` (x if
    none), new KV)."""
    if ctx is None:
        attn = layers[0].self_attn
        ctx = StackContext.build(inv_freq, past[0][0].shape[1] if past else 0, x.shape[1], attn.heads // attn.kv_heads)
    tapped, new = x, []
    for i, layer in enumerate(layers):
        x, kv = layer(x, ctx, past[i] if past else None)
        new.append(kv)
        if i == tap:
            tapped = x
    return x, tapped, new


def _check_batch(batch: int) -> None:
    if batch != 1:
        raise ValueError(f"batch {batch}: the modules run one conversation at a time (batch 1, as the graphs)")


def _check_past(past: list[KV] | None, n: int, what: str) -> None:
    if past is not None and len(past) != n:
        raise ValueError(f"{what} past has {len(past)} layers, the model has {n}; pass one (k, v) per layer or None")


class ThinkerModel(nn.Module):
    """Key prefix `model.`: embedding, blocks, final norm (the tied lm_head lives on OmniTorchModel)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = BlockDims.thinker(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(d) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)


class CodebookEmbedding(nn.Module):
    """Talker input embedding: mean over codebooks of a shared table plus a per-codebook low-rank adapter."""

    def __init__(self, vocab: int, dim: int, codebooks: int, rank: int):
        super().__init__()
        self.base = nn.Embedding(vocab, dim)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Embedding(vocab, rank), nn.GELU(), nn.Linear(rank, dim, bias=False))
            for _ in range(codebooks))

    def forward(self, codes: Tensor) -> Tensor:
        """codes int64 [b, codebooks, seq] -> [b, seq, dim]."""
        if torch.onnx.is_in_onnx_export():
            return self._stacked(codes)
        base = self.base(codes)
        terms = [base[:, i] + adapter(codes[:, i]) for i, adapter in enumerate(self.adapters)]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total / len(self.adapters)

    def _stacked(self, codes: Tensor) -> Tensor:
        """The exported form: the adapters as one lookup in their stacked tables and one matmul with their stacked
        up-projections (sum_i W_i g_i = [W_0 .. W_7] concat(g_i)), so a decode step runs 1 Gather + 1 MatMul
        instead of 8 of each (see shared_input_linears for why eager keeps the loop)."""
        n, vocab = len(self.adapters), self.base.num_embeddings
        tables = torch.cat([a[0].weight for a in self.adapters])  # [n * vocab, rank]
        offsets = torch.arange(n, device=codes.device)[:, None] * vocab
        low = F.gelu(F.embedding(codes + offsets, tables)).permute(0, 2, 1, 3).flatten(2)  # [b, seq, n * rank]
        up = torch.cat([a[2].weight for a in self.adapters], dim=1)  # [dim, n * rank]
        return (self.base(codes).sum(1) + F.linear(low, up)) / n


class CodebookHead(nn.Module):
    """Talker output head: a shared projection plus a per-codebook low-rank adapter."""

    def __init__(self, dim: int, vocab: int, codebooks: int, rank: int):
        super().__init__()
        self.base = nn.Linear(dim, vocab, bias=False)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, rank, bias=False), nn.GELU(), nn.Linear(rank, vocab, bias=False))
            for _ in range(codebooks))

    def forward(self, h: Tensor) -> Tensor:
        """h [b, seq, dim] -> logits [b, codebooks, seq, vocab]. The adapters' down-projections share h (one MatMul
        when exported); their up-projections stay one matmul each: a batched one would need 3-D int8 weights, which
        onnxruntime's per-channel int8 MatMul kernels reject."""
        base = self.base(h)
        lows = shared_input_linears(h, [a[0] for a in self.adapters])
        return torch.stack([base + a[2](a[1](low)) for low, a in zip(lows, self.adapters)], dim=1)


def _proj_mlp(d_in: int, d_out: int, eps: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out), RMSNorm(d_out, eps))


class Talker(nn.Module):
    """Key prefix `talker.`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, th = BlockDims.talker(cfg), cfg.talker_hidden_size
        self.layers = nn.ModuleList(Block(d) for _ in range(cfg.num_talker_hidden_layers))
        self.norm = RMSNorm(th, cfg.rms_norm_eps)
        self.lm_head = CodebookHead(th, cfg.audio_vocab_size, cfg.num_codebooks, cfg.adapter_rank)
        self.embed_tokens = CodebookEmbedding(cfg.audio_vocab_size, th, cfg.num_codebooks, cfg.adapter_rank)
        self.codec_proj = _proj_mlp(th, th, cfg.rms_norm_eps)
        self.embed_proj = _proj_mlp(cfg.hidden_size, th, cfg.rms_norm_eps)
        self.text_scale = nn.Parameter(torch.tensor(3.0))
        self.audio_scale = nn.Parameter(torch.tensor(1.0))
        self.spk_proj = nn.Linear(cfg.spk_emb_size, th, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg.talker_head_dim, cfg.rope_theta), persistent=False)


class Projector(nn.Module):
    """Speech/image feature projector: LayerNorm -> Linear -> exact GELU -> Linear."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class OmniTorchModel(nn.Module):
    """Thinker + Talker + projectors with upstream's parameter layout; the parity reference for every graph."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = ThinkerModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied; state_dict lists both keys, as upstream's
        self.talker = Talker(cfg)
        self.audio_proj = Projector(cfg.audio_hidden_size, cfg.hidden_size)
        self.vision_proj = Projector(cfg.image_hidden_size, cfg.hidden_size)

    def thinker_hidden(self, input_ids: Tensor, past: list[KV] | None = None, feature_embeds: Tensor | None = None,
                       feature_mask: Tensor | None = None) -> tuple[Tensor, Tensor, list[KV]]:
        """Thinker blocks. Returns (last layer's output [1, seq, hidden] before the final norm, bridge, new KV)."""
        _check_batch(input_ids.shape[0])
        _check_past(past, self.cfg.num_hidden_layers, "thinker")
        h = self.model.embed_tokens(input_ids)
        if feature_embeds is not None:
            if feature_mask is None:
                raise ValueError("feature_embeds needs feature_mask [1, seq] (true where a feature replaces a token)")
            h = torch.where(feature_mask[..., None], feature_embeds.to(h.dtype), h)
        return run_blocks(self.model.layers, h, self.model.inv_freq, past, tap=self.cfg.bridge_layer)

    def thinker_forward(self, input_ids: Tensor, past: list[KV] | None = None, feature_embeds: Tensor | None = None,
                        feature_mask: Tensor | None = None) -> tuple[Tensor, Tensor, list[KV]]:
        """input_ids int64 [1, seq]; past: per layer (k, v) [1, past_seq, kv_heads, head_dim] or None.

        Returns (logits [1, seq, vocab], bridge [1, seq, hidden] = un-normed output of layer cfg.bridge_layer,
        presents: per layer (k, v) [1, past_seq+seq, kv_heads, head_dim]).
        """
        h, bridge, new = self.thinker_hidden(input_ids, past, feature_embeds, feature_mask)
        return self.lm_head(self.model.norm(h)), bridge, _append(past, new)

    def talker_hidden(self, bridge: Tensor, codes: Tensor, past: list[KV] | None = None,
                      spk_emb: Tensor | None = None, spk_mask: Tensor | None = None) -> tuple[Tensor, list[KV]]:
        """Talker blocks. Returns (last layer's output [1, seq, talker_hidden] before the final norm, new KV)."""
        _check_batch(bridge.shape[0])
        _check_past(past, self.cfg.num_talker_hidden_layers, "talker")
        t = self.talker
        e = t.embed_tokens(codes)
        if spk_emb is not None:
            if spk_mask is None:
                spk_mask = codes[:, 0, :] == self.cfg.audio_spk_code
            e = torch.where(spk_mask[..., None], t.spk_proj(spk_emb)[:, None, :], e)
        x = t.embed_proj(bridge) * t.text_scale + t.codec_proj(e) * t.audio_scale
        x, _, new = run_blocks(t.layers, x, t.inv_freq, past)
        return x, new

    def talker_logits(self, h: Tensor) -> Tensor:
        """Talker blocks' output [1, seq, talker_hidden] -> audio logits [1, codebooks, seq, audio_vocab]."""
        return self.talker.lm_head(self.talker.norm(h))

    def talker_forward(self, bridge: Tensor, codes: Tensor, past: list[KV] | None = None,
                       spk_emb: Tensor | None = None, spk_mask: Tensor | None = None) -> tuple[Tensor, list[KV]]:
        """bridge [1, seq, hidden]; codes int64 [1, codebooks, seq]; spk_emb [1, spk_emb_size] or None;
        spk_mask bool [1, seq] or None (with spk_emb given: codes[:, 0] == cfg.audio_spk_code, as upstream).

        Returns (audio_logits [1, codebooks, seq, audio_vocab], presents per Talker layer [1, past_seq+seq, kv, d]).
        """
        h, new = self.talker_hidden(bridge, codes, past, spk_emb, spk_mask)
        return self.talker_logits(h), _append(past, new)

    def audio_project(self, x: Tensor) -> Tensor:
        """Speech encoder output [1, frames, audio_hidden] -> Thinker embeddings [1, frames, hidden]."""
        return self.audio_proj(x)

    def vision_project(self, x: Tensor) -> Tensor:
        """Vision encoder output [1, patches, image_hidden] -> Thinker embeddings [1, patches, hidden]."""
        return self.vision_proj(x)


def _append(past: list[KV] | None, new: list[KV]) -> list[KV]:
    if past is None:
        return new
    return [(torch.cat([pk, k], 1), torch.cat([pv, v], 1)) for (pk, pv), (k, v) in zip(past, new)]


def state_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of a checkpoint for `cfg` and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = OmniTorchModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
