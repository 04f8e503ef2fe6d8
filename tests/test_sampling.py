"""Numpy samplers vs a torch restatement of upstream's sampling code (MiniMindOmni.stream_generate)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omni_onnx.sampling import AudioSampling, TextSampling, sample_code, sample_text


def torch_text_filtered(logits: np.ndarray, seen: list[int], temperature: float, top_p: float, rp: float):
    z = torch.from_numpy(logits.copy()) / (temperature + 1e-9)
    if rp != 1.0:
        s = z[seen]
        z[seen] = torch.where(s > 0, s / rp, s * rp)
    sl, si = torch.sort(z, descending=True)
    mask = torch.cumsum(F.softmax(sl, dim=-1), dim=-1) > top_p
    mask[1:], mask[0] = mask[:-1].clone(), False
    z[si[mask]] = -float("inf")
    return z.numpy()


def torch_code_filtered(logits: np.ndarray, recent: list[int]):
    z = torch.from_numpy(logits.copy()) / 0.2
    for c in recent:
        s = z[c]
        z[c] = torch.where(s > 0, s / 1.05, s * 1.05)
    return z.numpy()


def test_greedy_text_matches_argmax_of_upstream_processing():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.normal(size=6400).astype(np.float32) * 3
        seen_ids = rng.choice(6400, 30, replace=False)
        seen = np.zeros(6400, bool)
        seen[seen_ids] = True
        opts = TextSampling(temperature=0.7, top_p=0.85, repetition_penalty=1.3)
        ref = torch_text_filtered(logits, seen_ids.tolist(), 0.7, 0.85, 1.3)
        assert sample_text(logits, seen, opts, None, greedy=True) == int(np.argmax(ref))


def test_text_sampling_keeps_exactly_upstreams_nucleus():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=50).astype(np.float32) * 2
    seen = np.zeros(50, bool)
    ref = torch_text_filtered(logits, [], 0.7, 0.85, 1.0)
    allowed = set(np.flatnonzero(np.isfinite(ref)))
    opts = TextSampling(temperature=0.7, top_p=0.85)
    draws = [sample_text(logits, seen, opts, rng, greedy=False) for _ in range(3000)]
    assert set(draws) == allowed  # the crossing token is kept, nothing beyond it
    p = torch.softmax(torch.from_numpy(ref), -1).numpy()
    freq = np.bincount(draws, minlength=50) / len(draws)
    assert np.abs(freq - p).max() < 0.03


def test_audio_penalty_compounds_per_occurrence_and_greedy_matches():
    rng = np.random.default_rng(2)
    opts = AudioSampling()
    for _ in range(20):
        logits = rng.normal(size=2112).astype(np.float32)
        top = int(np.argmax(logits))
        recent = [top, top, 2049]  # a duplicate is penalised twice; pads count
        ref = torch_code_filtered(logits, recent)
        assert sample_code(logits, np.array(recent), opts, None, greedy=True) == int(np.argmax(ref))


def test_audio_sampling_draws_only_from_top_k():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=2112).astype(np.float32)
    top50 = set(np.argsort(-logits / 0.2)[:50].tolist())
    draws = {sample_code(logits, np.array([], np.int64), AudioSampling(), rng, greedy=False) for _ in range(2000)}
    assert draws <= top50 and len(draws) > 10


@pytest.mark.parametrize("kw", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"repetition_penalty": 0}])
def test_invalid_text_options_are_rejected(kw):
    with pytest.raises(ValueError):
        TextSampling(**kw)
