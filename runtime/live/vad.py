"""Silero VAD (the bundle's `vad` graph): speech probability for each 32 ms of 16 kHz audio, state kept between calls.

Upstream's web demo runs Silero v4 (`h`, `c` state) on 1024-sample windows. The bundle carries the `silero-vad`
package's current model (v5+), which takes exactly 512 samples plus the previous chunk's last 64 as context, so the
turn-taking windows are 512 samples here (see `turns.TurnOptions`).
"""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..contracts import VAD_CHUNK, VAD_CONTEXT
from ..errors import BundleError
from ..session import GraphSession, SessionOptions
from ..speech import SAMPLE_RATE  # Silero runs at the speech front end's 16 kHz


class SileroVad:
    def __init__(self, session: GraphSession):
        self.session = session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    @classmethod
    def from_bundle(cls, bundle: Bundle, opts: SessionOptions = SessionOptions()) -> SileroVad:
        """The graph is listed (and checksummed) with the others but optional: only `--mic` needs it."""
        if not bundle.has_graph("vad"):
            raise BundleError(f"bundle {bundle.root} has no voice activity detector (silero_vad.onnx), which --mic "
                              f"needs; re-export it with this omni-export (pip install 'omni-onnx[export]')")
        return cls(GraphSession(bundle.graph_path("vad"), bundle.specs["vad"], opts))

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(VAD_CONTEXT, np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        """Probability that this chunk of VAD_CHUNK samples (float32 in [-1, 1]) is speech."""
        if chunk.shape != (VAD_CHUNK,):
            raise ValueError(f"the VAD takes chunks of {VAD_CHUNK} samples at 16 kHz, got shape {chunk.shape}")
        x = np.concatenate([self._context, chunk.astype(np.float32, copy=False)])[None]
        out = self.session.run({"audio": x, "past_state": self._state, "sr": self._sr})
        self._state, self._context = out["present_state"], x[0, -VAD_CONTEXT:]
        return float(out["speech_prob"][0, 0])
