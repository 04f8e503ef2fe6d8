"""Speech output: a WAV file written frame by frame, and live playback through sounddevice (imported lazily)."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import OmniError


def check_writable(path: Path) -> None:
    """Fail before generating, not after: the folder must exist."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise OmniError(f"cannot write {path}: folder {parent} does not exist; create it or choose another --out")


class WavWriter:
    """16-bit PCM WAV, appended as frames arrive so a long answer never sits in memory. Samples are clipped."""

    def __init__(self, path: Path, sample_rate: int):
        check_writable(path)
        self.path = Path(path)
        self._f = sf.SoundFile(str(path), mode="w", samplerate=sample_rate, channels=1, subtype="PCM_16")
        self.samples = 0

    def write(self, pcm: np.ndarray) -> None:
        self._f.write(np.clip(pcm, -1.0, 1.0))
        self.samples += len(pcm)

    def close(self) -> None:
        self._f.close()


class Player:
    """Plays 24 kHz frames as they are decoded. The audio callback only moves fixed-size blocks out of a queue and
    writes silence on underrun (counted in `underruns`)."""

    def __init__(self, sample_rate: int, block: int, device: int | str | None = None):
        try:
            import sounddevice as sd
        except OSError as e:  # PortAudio shared library missing
            raise OmniError(f"--play needs PortAudio ({e}); install it with `apt-get install libportaudio2`") from None
        except ImportError:
            raise OmniError("--play needs the audio extra: pip install 'omni-onnx[audio]'") from None
        self.block, self.underruns = block, 0
        self._q: queue.Queue[np.ndarray] = queue.Queue()
        try:
            self._stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=block,
                                           device=device, callback=self._callback)
            self._stream.start()
        except Exception as e:  # sounddevice raises PortAudioError for missing/busy devices
            raise OmniError(f"cannot open the audio output device {device if device is not None else '(default)'}: "
                            f"{e}; check `python -m sounddevice` for devices") from None

    def _callback(self, outdata, frames, time, status) -> None:  # noqa: ARG002 (sounddevice signature)
        try:
            outdata[:, 0] = self._q.get_nowait()
        except queue.Empty:
            outdata.fill(0)
            self.underruns += 1

    def write(self, pcm: np.ndarray) -> None:
        self._q.put(np.clip(pcm, -1.0, 1.0).astype(np.float32))

    def close(self) -> None:
        """Let queued audio finish, then stop."""
        import time
        while not self._q.empty():
            time.sleep(self.block / 24000)
        self._stream.stop()
        self._stream.close()
