"""Feature injection and placeholder prompts vs a torch restatement of upstream's inject_audio_features /
count_vision_proj and eval_omni.py's prompt strings."""

from __future__ import annotations

import numpy as np
import torch

from omni_onnx.config import TINY
from omni_onnx.inject import prompt_features, user_content


def upstream_style(ids: list[int], h: torch.Tensor, audio: torch.Tensor | None, images: list[torch.Tensor]):
    """Restated from upstream: first run of 16 gets min(len, run) audio rows; k-th run of 12 gets image k."""
    seq, i = ids, 0
    while i < len(seq):
        if seq[i] == 16:
            start = i
            while i < len(seq) and seq[i] == 16:
                i += 1
            if audio is not None:
                n = min(audio.size(0), i - start)
                h = torch.cat((h[:start], audio[:n], h[start + n:]), 0)
                audio = None
        else:
            i += 1
    k, i = 0, 0
    while i < len(seq):
        if seq[i] == 12:
            start = i
            while i < len(seq) and seq[i] == 12:
                i += 1
            if k < len(images):
                h = torch.cat((h[:start], images[k][: i - start], h[i:]), 0)[: len(seq)]
                k += 1
        else:
            i += 1
    return h


def test_injection_matches_upstream_rules():
    rng = np.random.default_rng(0)
    H = TINY.hidden_size
    ids = [1, 5] + [16] * 7 + [9, 16, 16] + [12] * 64 + [3] + [12] * 10 + [2]
    audio = rng.normal(size=(5, H)).astype(np.float32)  # fewer rows than pads: the rest keep the pad embedding
    images = [rng.normal(size=(64, H)).astype(np.float32) for _ in range(2)]
    base = torch.from_numpy(rng.normal(size=(len(ids), H)).astype(np.float32))
    f = prompt_features(ids, TINY, audio, images)
    ours = np.where(f.mask[:, None], f.embeds, base.numpy())
    ref = upstream_style(ids, base, torch.from_numpy(audio), [torch.from_numpy(x) for x in images])
    assert np.array_equal(ours, ref.numpy())


def test_user_content_follows_eval_prompts():
    pads = "<|image_pad|>" * 64
    assert user_content(None, 3, 0, TINY) == "<|audio_pad|>" * 3
    assert user_content(None, 0, 0, TINY) == "<|audio_pad|>"  # `valid_len or 1`
    assert user_content(None, None, 1, TINY) == "Please describe this image.\n\n" + pads
    assert user_content("What is this?", None, 1, TINY) == "What is this?\n\n" + pads
    assert user_content(None, 2, 1, TINY) == "Please answer me: " + "<|audio_pad|>" * 2 + "\n\n" + pads
    assert prompt_features([1, 2, 3], TINY, None, []) is None
