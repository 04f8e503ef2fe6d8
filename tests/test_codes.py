"""The fixed-size code ring vs upstream's growing per-codebook lists (stream_generate's frame/stop logic)."""

import numpy as np
import pytest

from omni_onnx.codes import AudioCodeRing


def upstream_lists(columns, sampled_masks, audio_steps):
    """Upstream's bookkeeping, restated with growing lists: returns frames per step (or None)."""
    codes = [[] for _ in range(8)]
    stop = [None] * 8
    frames = []
    for step, (col, smp, a) in enumerate(zip(columns, sampled_masks, audio_steps)):
        for i in range(8):
            codes[i].append(int(col[i]))
            if smp[i] and stop[i] is None and col[i] >= 2048:
                stop[i] = len(codes[i]) - 1
        frame = None
        if a >= 7:
            f = [codes[i][step - 7 + i] for i in range(8)]
            if all(stop[i] is None or step - 7 + i < stop[i] for i in range(8)):
                frame = f
        frames.append((frame, [codes[i][-3:] for i in range(8)], all(s is not None for s in stop)))
    return frames


@pytest.mark.parametrize("think_end", [1, 9], ids=["plain", "thinking"])
def test_ring_matches_upstream_lists_over_a_long_answer_with_stops(think_end):
    """think_end = T: audio_step = step - T (plain mode T = 1; thinking mode T = step of `</think>\n\n` + 2)."""
    rng = np.random.default_rng(0)
    n_steps = 300
    audio_steps = [-1 if s < think_end - 2 else s - think_end for s in range(n_steps)]
    columns, masks = [], []
    for s in range(n_steps):
        smp = np.array([audio_steps[s] >= i for i in range(8)])
        col = rng.integers(0, 2048, 8)
        if s > 250:
            col[rng.integers(0, 8)] = 2050  # stop codes arrive codebook by codebook
        col[~smp] = 2049
        columns.append(col)
        masks.append(smp)
    expected = upstream_lists(columns, masks, audio_steps)
    ring = AudioCodeRing(8, 2049, 2048)
    for col, smp, a, (frame, last3, stopped) in zip(columns, masks, audio_steps, expected):
        ring.append(col, smp)
        got = ring.frame(a)
        assert (got is None and frame is None) or got.tolist() == frame
        assert [ring.recent(i, 3).tolist() for i in range(8)] == last3
        assert ring.all_stopped() == stopped
        assert (ring.latest() == col).all()
    assert ring._ring.shape == (8, 8)  # fixed size, however long the answer
