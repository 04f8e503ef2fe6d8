"""Streaming Mimi decoding: F 8-code frames in, F x 1920 samples of 24 kHz audio out, state carried explicitly.

The decoder transformer's keys/values live in fixed rings of `kv_window` slots per layer. The graph returns only
the 2F new entries per layer and `decode_frames` writes them in place, so no call copies the ~8 MB cache. The
returned state therefore shares its rings with the one passed in: keep only the latest state.

    codes [8, F] -> zero >= 2049 -> graph(codes, position, rings, conv states)
                                      |-> audio [F x 1920]
                                      |-> present_key/value_<i> [1, H, 2F, D] -> written into the rings
                                      '-> present_conv_<j> -> next state's conv states

Several frames per call give the audio of one at a time (exact at any F, to float rounding) for less compute per
frame: the convolutions' ~57 MB of weights are read once per call and each node's fixed cost is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .contracts import ContractError, MimiDims, mimi_decoder_spec
from .session import GraphSession

F32 = NDArray[np.float32]

# Upstream decodes pad (2049), stop (2050) and speaker (2051) codes as code 0.
FIRST_ZEROED_CODE = 2049


class KvRing:
    """Per-layer key/value buffers of `kv_window` slots, written in place; `written` counts positions stored."""

    def __init__(self, dims: MimiDims):
        self.keys = [np.zeros(dims.kv_shape, np.float32) for _ in range(dims.num_layers)]
        self.values = [np.zeros(dims.kv_shape, np.float32) for _ in range(dims.num_layers)]
        self.written = 0


@dataclass(frozen=True)
class MimiState:
    """Decoder state after `position // steps_per_frame` frames. `kv` is shared with the next state."""

    position: int  # transformer steps decoded so far
    conv: tuple[F32, ...]  # one per MimiDims.conv_states entry
    kv: KvRing


class MimiStreamDecoder:
    """Runs the `mimi_decoder` graph frame by frame; equals transformers' `MimiModel.decode` of the whole answer."""

    def __init__(self, session: GraphSession, dims: MimiDims):
        frames = session.spec.inputs[0].dims[-1]  # symbolic, or fixed at 1 in a static bundle
        if session.spec != mimi_decoder_spec(dims, None if isinstance(frames, str) else frames):
            raise ContractError(f"{session.path.name} was opened with a spec that does not match these Mimi dims; "
                                f"open it with mimi_decoder_spec(dims) for the dims stored beside the graph")
        self.session, self.dims = session, dims
        self.max_frames = frames if isinstance(frames, int) else dims.kv_window // dims.steps_per_frame
        layers = range(dims.num_layers)
        self._kv_names = [(f"key_{i}", f"value_{i}") for i in layers]
        self._conv_names = [f"conv_{j}" for j in range(len(dims.conv_states))]

    def initial_state(self) -> MimiState:
        conv = tuple(np.zeros((1, c, n), np.float32) for c, n in self.dims.conv_states)
        return MimiState(0, conv, KvRing(self.dims))

    def feeds(self, codes: NDArray[np.integer], state: MimiState) -> dict[str, np.ndarray]:
        """The graph inputs for one call. `codes`: int `[num_codebooks]` (one frame) or `[num_codebooks, F]` (F
        consecutive frames, 1 <= F <= max_frames), Talker codes (>= 2049 decode as 0)."""
        d = self.dims
        codes = np.asarray(codes)
        if codes.ndim == 1:
            codes = codes[:, None]
        if (codes.ndim != 2 or codes.shape[0] != d.num_codebooks or not 1 <= codes.shape[1] <= self.max_frames
                or not np.issubdtype(codes.dtype, np.integer)):
            raise ValueError(f"codes must be an integer array of shape ({d.num_codebooks},) or "
                             f"({d.num_codebooks}, F) with 1 <= F <= {self.max_frames}, "
                             f"got {codes.dtype} {codes.shape}")
        if state.position != state.kv.written:
            raise RuntimeError("this MimiState was already advanced by decode_frames (its KV rings are shared); "
                               "pass the state returned by the latest call, or start over with initial_state()")
        codes = np.where(codes >= FIRST_ZEROED_CODE, 0, codes).astype(np.int64)
        if codes.min() < 0 or codes.max() >= d.codebook_size:
            raise ValueError(f"codes must be Mimi codes in [0, {d.codebook_size}) or >= {FIRST_ZEROED_CODE} "
                             f"(decoded as 0), got {codes.tolist()}; drop frames holding code {d.codebook_size}")
        feeds = {"codes": codes[None],
                 "position": np.array([state.position], np.int64)}
        for (k, v), key, value in zip(self._kv_names, state.kv.keys, state.kv.values):
            feeds["past_" + k], feeds["past_" + v] = key, value
        feeds.update(("past_" + n, s) for n, s in zip(self._conv_names, state.conv))
        return feeds

    def advance(self, state: MimiState, outputs: dict[str, np.ndarray]) -> tuple[F32, MimiState]:
        """Write the graph outputs for one call into the state: (audio float32 `[F x frame_samples]`, next state)."""
        steps, kv = outputs["present_" + self._kv_names[0][0]].shape[2], state.kv
        slots = (state.position + np.arange(steps)) % self.dims.kv_window
        for (k, v), key, value in zip(self._kv_names, kv.keys, kv.values):
            key[:, :, slots] = outputs["present_" + k]
            value[:, :, slots] = outputs["present_" + v]
        kv.written += steps
        conv = tuple(outputs["present_" + n] for n in self._conv_names)
        return outputs["audio"].reshape(-1), MimiState(state.position + steps, conv, kv)

    def decode_frames(self, codes: NDArray[np.integer], state: MimiState) -> tuple[F32, MimiState]:
        """Decode F consecutive frames in one call. `codes`: int `[num_codebooks, F]` (or `[num_codebooks]`: one
        frame). Returns audio float32 `[F x frame_samples]` and the next state; the passed state is used up (its KV
        rings now belong to the returned one)."""
        return self.advance(state, self.session.run(self.feeds(codes, state)))

    def decode_frame(self, codes: NDArray[np.integer], state: MimiState) -> tuple[F32, MimiState]:
        """Decode one frame. `codes`: int `[num_codebooks]`. Returns audio float32 `[frame_samples]` and the
        next state (as `decode_frames`)."""
        codes = np.asarray(codes)
        if codes.shape != (self.dims.num_codebooks,):
            raise ValueError(f"codes must be an integer array of shape ({self.dims.num_codebooks},), "
                             f"got {codes.dtype} {codes.shape}; decode_frames takes several frames")
        return self.decode_frames(codes, state)


STEADY_FRAMES_PER_CALL = 4  # 320 ms of audio per call once an answer has started (see FrameBatcher)


class FrameBatcher:
    """An answer's frames in, its audio out in calls of up to `per_call` frames: the first frame alone (first sound
    as early as one frame per call gives it), the rest `per_call` at a time. The audio is the same to float rounding; a
    call of 4 frames costs ~0.7x per frame of 4 calls of one (full-size int8, 2-core AVX2: `omni-bench --suite
    mimi`). While the loop runs faster than real time the later frames are still ahead of playback."""

    def __init__(self, decoder: MimiStreamDecoder, per_call: int = STEADY_FRAMES_PER_CALL):
        self.decoder, self.per_call = decoder, max(1, min(per_call, decoder.max_frames))
        self.state, self.pending = decoder.initial_state(), []

    def push(self, frame: NDArray[np.integer]) -> F32 | None:
        """Take one frame `[num_codebooks]`; the audio of the pending frames when a call is due, else None."""
        self.pending.append(np.asarray(frame))
        due = 1 if self.state.position == 0 else self.per_call
        return self.flush() if len(self.pending) >= due else None

    def flush(self) -> F32 | None:
        """Decode the pending frames now (the answer ended); None if there are none."""
        if not self.pending:
            return None
        pcm, self.state = self.decoder.decode_frames(np.stack(self.pending, axis=1), self.state)
        self.pending = []
        return pcm
