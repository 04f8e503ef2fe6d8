"""Where speech and image features enter the prompt: placeholder text and the embedding overrides at prefill.

Upstream's rules (MiniMindOmni.inject_audio_features / count_vision_proj): the audio features fill the *first*
contiguous run of `<|audio_pad|>` (min(features, run) rows; other runs keep the pad embedding); image k fills the
k-th run of `<|image_pad|>` (truncated to the run). Placeholder counts: one audio pad per encoder frame, 64 per image.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .generate import Features

AUDIO_PAD, IMAGE_PAD = "<|audio_pad|>", "<|image_pad|>"
DESCRIBE_IMAGE = "Please describe this image."  # eval_omni.py's image prompt
ANSWER_ME = "Please answer me: "  # eval_omni.py's speech + image prompt


def user_content(text: str | None, audio_frames: int | None, images: int, cfg: ModelConfig) -> str:
    """The user message upstream's eval builds: [text] [audio pads] ["\\n\\n" + 64 image pads per image].

    Speech alone is only pads; an image without text gets eval_omni's "Please describe this image."; speech with an
    image and no text gets its "Please answer me: ".
    """
    if audio_frames is not None and images and not text:
        text = ANSWER_ME
    elif images and audio_frames is None and not text:
        text = DESCRIBE_IMAGE
    parts = [text or ""]
    if audio_frames is not None:
        parts.append(AUDIO_PAD * max(1, audio_frames))
    for _ in range(images):
        parts.append(("\n\n" if any(parts) else "") + IMAGE_PAD * cfg.image_token_len)
    return "".join(parts)


def _runs(ids: np.ndarray, token: int) -> list[tuple[int, int]]:
    """(start, end) of each contiguous run of `token`."""
    hit = np.concatenate([[False], ids == token, [False]])
    edges = np.flatnonzero(hit[1:] != hit[:-1])
    return list(zip(edges[::2], edges[1::2]))


def prompt_features(ids: list[int], cfg: ModelConfig, audio: np.ndarray | None,
                    images: list[np.ndarray]) -> Features | None:
    """Embedding overrides for a prompt. `audio`: float32 [frames, hidden] (projected); `images`: each float32
    [64, hidden] (projected). None when there is nothing to inject."""
    if audio is None and not images:
        return None
    arr = np.asarray(ids)
    embeds = np.zeros((len(ids), cfg.hidden_size), np.float32)
    mask = np.zeros(len(ids), bool)
    runs = _runs(arr, cfg.audio_token_id)
    if audio is not None and runs:
        a, b = runs[0]
        n = min(len(audio), b - a)
        embeds[a:a + n], mask[a:a + n] = audio[:n], True
    for (a, b), img in zip(_runs(arr, cfg.image_token_id), images):
        n = min(len(img), b - a)
        embeds[a:a + n], mask[a:a + n] = img[:n], True
    return Features(embeds, mask)
