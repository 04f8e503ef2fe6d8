"""OmniTorchModel vs a naive, loop-based re-statement of upstream's maths (reference spec sections 3-5).

The naive reference runs the whole sequence at once (no cache, one head and one token at a time where upstream
routes or groups), so agreement also checks the module's KV-cache path, grouped GQA and one-hot MoE. The session
that wrote these modules also compared them with upstream's own MiniMindOmni (max abs error ~3e-6 at full size).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from omni_onnx.config import FULL, TINY
from omni_onnx.export.modeling import OmniTorchModel, state_shapes
from omni_onnx.export.random_checkpoint import random_state_dict

TINY_MOE = dataclasses.replace(TINY, use_moe=True)
ATOL = 2e-5


# ---- naive reference: [seq, dim] tensors, weights read from the state dict --------------------------------------

def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, theta):
    """x [seq, heads, d] at positions 0..seq-1, NeoX halves."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.outer(torch.arange(x.shape[0]).float(), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin


def _swiglu(sd, p, x):
    return (F.silu(x @ sd[p + "gate_proj.weight"].T) * (x @ sd[p + "up_proj.weight"].T)) @ sd[p + "down_proj.weight"].T


def _block(sd, p, x, heads, kv, d, cfg):
    seq, eps = x.shape[0], cfg.rms_norm_eps
    h = _rms(x, sd[p + "input_layernorm.weight"], eps)
    a = p + "self_attn."
    q = _rope(_rms((h @ sd[a + "q_proj.weight"].T).view(seq, heads, d), sd[a + "q_norm.weight"], eps), cfg.rope_theta)
    k = _rope(_rms((h @ sd[a + "k_proj.weight"].T).view(seq, kv, d), sd[a + "k_norm.weight"], eps), cfg.rope_theta)
    v = (h @ sd[a + "v_proj.weight"].T).view(seq, kv, d)
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)
    outs = []
    for j in range(heads):
        g = j // (heads // kv)
        s = (q[:, j] @ k[:, g].T / math.sqrt(d)).masked_fill(future, float("-inf"))
        outs.append(torch.softmax(s, -1) @ v[:, g])
    x = x + torch.cat(outs, -1) @ sd[a + "o_proj.weight"].T
    h = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
    if not cfg.use_moe:
        return x + _swiglu(sd, p + "mlp.", h), (k, v)
    rows = []
    for t in range(seq):  # route each token to its top-1 expert
        e = int(torch.softmax(h[t] @ sd[p + "mlp.gate.weight"].T, -1).argmax())
        rows.append(_swiglu(sd, f"{p}mlp.experts.{e}.", h[t:t + 1]))
    return x + torch.cat(rows), (k, v)


def _naive_thinker(sd, cfg, ids, feats=None, mask=None):
    x = sd["model.embed_tokens.weight"][ids]
    if feats is not None:
        x = torch.where(mask[:, None], feats, x)
    bridge, kvs = None, []
    for i in range(cfg.num_hidden_layers):
        x, kv = _block(sd, f"model.layers.{i}.", x, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg)
        kvs.append(kv)
        bridge = x if i == cfg.bridge_layer else bridge
    return _rms(x, sd["model.norm.weight"], cfg.rms_norm_eps) @ sd["lm_head.weight"].T, bridge, kvs


def _naive_talker(sd, cfg, bridge, codes, spk_emb=None):
    eps, n = cfg.rms_norm_eps, cfg.num_codebooks
    e = sum(sd["talker.embed_tokens.base.weight"][codes[i]]
            + F.gelu(sd[f"talker.embed_tokens.adapters.{i}.0.weight"][codes[i]])
            @ sd[f"talker.embed_tokens.adapters.{i}.2.weight"].T for i in range(n)) / n
    if spk_emb is not None:
        e = torch.where((codes[0] == cfg.audio_spk_code)[:, None], spk_emb @ sd["talker.spk_proj.weight"].T, e)

    def proj(p, x):
        x = F.gelu(x @ sd[p + "0.weight"].T + sd[p + "0.bias"]) @ sd[p + "2.weight"].T + sd[p + "2.bias"]
        return _rms(x, sd[p + "3.weight"], eps)

    x = (proj("talker.embed_proj.", bridge) * sd["talker.text_scale"]
         + proj("talker.codec_proj.", e) * sd["talker.audio_scale"])
    for i in range(cfg.num_talker_hidden_layers):
        x, _ = _block(sd, f"talker.layers.{i}.", x, cfg.talker_num_attention_heads, cfg.talker_num_key_value_heads,
                      cfg.talker_head_dim, cfg)
    h = _rms(x, sd["talker.norm.weight"], eps)
    base = h @ sd["talker.lm_head.base.weight"].T
    return torch.stack([base + F.gelu(h @ sd[f"talker.lm_head.adapters.{i}.0.weight"].T)
                        @ sd[f"talker.lm_head.adapters.{i}.2.weight"].T for i in range(n)])


# ---- tests --------------------------------------------------------------------------------------------------------

def _model(cfg, seed=0):
    sd = random_state_dict(cfg, seed)
    model = OmniTorchModel(cfg).eval()
    model.load_state_dict(sd, strict=True)
    return model, sd


def _close(a, b, what):
    diff = (a - b).abs().max().item()
    assert diff < ATOL, f"{what}: max abs diff {diff:.3g}"


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_state_dict_matches_release_layout(moe):
    shapes = state_shapes(dataclasses.replace(FULL, use_moe=moe))
    assert len(shapes) == (315 if moe else 195)
    expected = {
        "model.embed_tokens.weight": (6400, 768), "lm_head.weight": (6400, 768), "model.norm.weight": (768,),
        "model.layers.7.self_attn.k_proj.weight": (384, 768), "model.layers.0.self_attn.q_norm.weight": (96,),
        "talker.layers.3.self_attn.v_proj.weight": (384, 768), "talker.norm.weight": (768,),
        "talker.embed_tokens.base.weight": (2112, 768), "talker.embed_tokens.adapters.7.0.weight": (2112, 256),
        "talker.embed_tokens.adapters.0.2.weight": (768, 256), "talker.lm_head.adapters.7.0.weight": (256, 768),
        "talker.lm_head.adapters.0.2.weight": (2112, 256), "talker.embed_proj.3.weight": (768,),
        "talker.codec_proj.0.bias": (768,), "talker.text_scale": (), "talker.audio_scale": (),
        "talker.spk_proj.weight": (768, 192), "audio_proj.mlp.0.bias": (512,), "audio_proj.mlp.1.weight": (768, 512),
        "vision_proj.mlp.1.weight": (768, 768), "vision_proj.mlp.3.bias": (768,),
    }
    if moe:
        expected |= {"model.layers.0.mlp.gate.weight": (4, 768),
                     "model.layers.7.mlp.experts.3.down_proj.weight": (768, 2432),
                     "talker.layers.3.mlp.experts.0.up_proj.weight": (2432, 768)}
    else:
        expected |= {"model.layers.0.mlp.gate_proj.weight": (2432, 768),
                     "talker.layers.0.mlp.down_proj.weight": (768, 2432)}
    assert {k: shapes.get(k) for k in expected} == expected
    assert not [k for k in shapes if "freqs" in k or "inv_freq" in k], "RoPE buffers must not be saved"
    n_params = sum(math.prod(s) for k, s in shapes.items() if k != "lm_head.weight")
    assert round(n_params / 1e6, 2) == (314.89 if moe else 113.13)  # upstream's published counts


@pytest.mark.parametrize("cfg", [TINY, TINY_MOE], ids=["dense", "moe"])
def test_prefill_then_cached_steps_match_naive(cfg):
    model, sd = _model(cfg)
    g = torch.Generator().manual_seed(1)
    L, steps = 7, 3
    ids = torch.randint(0, cfg.vocab_size, (L + steps,), generator=g)
    codes = torch.randint(0, cfg.audio_vocab_size, (cfg.num_codebooks, L + steps), generator=g)
    codes[:, 2] = cfg.audio_spk_code
    spk = torch.randn(1, cfg.spk_emb_size, generator=g)
    ref_logits, ref_bridge, ref_kv = _naive_thinker(sd, cfg, ids)
    ref_audio = _naive_talker(sd, cfg, ref_bridge, codes, spk)
    with torch.no_grad():
        logits, bridge, tpast = model.thinker_forward(ids[None, :L])
        audio, kpast = model.talker_forward(bridge, codes[None, :, :L], spk_emb=spk)
        _close(logits[0], ref_logits[:L], "prefill text logits")
        _close(audio[0], ref_audio[:, :L], "prefill audio logits")
        for t in range(L, L + steps):
            logits, bridge, tpast = model.thinker_forward(ids[None, t:t + 1], tpast)
            audio, kpast = model.talker_forward(bridge, codes[None, :, t:t + 1], kpast, spk_emb=spk)
            _close(logits[0, 0], ref_logits[t], f"step {t} text logits")
            _close(bridge[0, 0], ref_bridge[t], f"step {t} bridge")
            _close(audio[0, :, 0], ref_audio[:, t], f"step {t} audio logits")
    for (k, v), (rk, rv) in zip(tpast, ref_kv):
        assert k.shape == (1, L + steps, cfg.num_key_value_heads, cfg.head_dim)
        _close(k[0], rk, "cached keys (after k_norm and RoPE)")
        _close(v[0], rv, "cached values")
    assert len(kpast) == cfg.num_talker_hidden_layers and kpast[0][0].shape[1] == L + steps


def test_feature_injection_and_explicit_spk_mask():
    model, sd = _model(TINY, seed=2)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, TINY.vocab_size, (9,), generator=g)
    feats = torch.randn(9, TINY.hidden_size, generator=g) * 0.02
    mask = torch.zeros(9, dtype=torch.bool)
    mask[2:6] = True
    codes = torch.randint(0, 2048, (TINY.num_codebooks, 9), generator=g)
    codes[0, 4] = TINY.audio_spk_code
    spk = torch.randn(1, TINY.spk_emb_size, generator=g)
    ref_logits, ref_bridge, _ = _naive_thinker(sd, TINY, ids, feats, mask)
    with torch.no_grad():
        logits, bridge, _ = model.thinker_forward(ids[None], feature_embeds=feats[None], feature_mask=mask[None])
        _close(logits[0], ref_logits, "text logits with injected features")
        default, _ = model.talker_forward(bridge, codes[None], spk_emb=spk)
        is_spk = codes[None, 0] == TINY.audio_spk_code
        explicit, _ = model.talker_forward(bridge, codes[None], spk_emb=spk, spk_mask=is_spk)
        none, _ = model.talker_forward(bridge, codes[None])
    assert torch.equal(default, explicit)
    _close(default[0], _naive_talker(sd, TINY, ref_bridge, codes, spk), "audio logits with spk substitution")
    _close(none[0], _naive_talker(sd, TINY, ref_bridge, codes), "audio logits without speaker")


def test_projectors_are_layernorm_gelu_mlp():
    model, sd = _model(TINY)
    x = torch.randn(1, 5, TINY.audio_hidden_size)
    p = "audio_proj.mlp."
    h = F.layer_norm(x, (TINY.audio_hidden_size,), sd[p + "0.weight"], sd[p + "0.bias"], 1e-5)
    ref = F.gelu(h @ sd[p + "1.weight"].T + sd[p + "1.bias"]) @ sd[p + "3.weight"].T + sd[p + "3.bias"]
    with torch.no_grad():
        _close(model.audio_project(x), ref, "audio projector")
        assert model.vision_project(torch.randn(1, 4, TINY.image_hidden_size)).shape == (1, 4, TINY.hidden_size)


def test_wrong_past_length_is_rejected():
    model, _ = _model(TINY)
    with pytest.raises(ValueError, match="thinker past has 1 layers"):
        model.thinker_forward(torch.zeros(1, 1, dtype=torch.long), [(torch.zeros(1, 1, 2, 16),) * 2])
