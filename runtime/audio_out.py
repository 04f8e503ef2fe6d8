"""Speech output: a WAV file written frame by frame, and live playback through sounddevice (imported lazily)."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import OmniError


def check_writable(path: Path) -> None:
    """Fail before generating, not after: the folder must exist."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise OmniError(f"cannot write {path}: folder {parent} does not exist; create it or choose another --out")


def import_sounddevice(flag: str):
    """sounddevice, or an OmniError naming what to install (its wheel does not bundle PortAudio on Linux)."""
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio shared library missing
        raise OmniError(f"{flag} needs PortAudio ({e}); install it with `apt-get install libportaudio2`") from None
    except ImportError:
        raise OmniError(f"{flag} needs the audio extra: pip install 'omni-onnx[audio]'") from None
    return sd


class WavWriter:
    """16-bit PCM WAV, appended as frames arrive so a long answer never sits in memory. Samples are clipped."""

    def __init__(self, path: Path, sample_rate: int, channels: int = 1):
        check_writable(path)
        self.path = Path(path)
        self._f = sf.SoundFile(str(path), mode="w", samplerate=sample_rate, channels=channels, subtype="PCM_16")
        self.samples = 0

    def write(self, pcm: np.ndarray) -> None:
        """[n] samples, or [n, channels]."""
        self._f.write(np.clip(pcm, -1.0, 1.0))
        self.samples += len(pcm)

    def close(self) -> None:
        self._f.close()


class Player:
    """Plays 24 kHz frames as they are decoded: a jitter buffer that starts with the first frame. The audio callback
    only moves fixed-size blocks: out of the play queue (silence on underrun, counted in `underruns`) and, as the
    echo reference for live conversation, into the played queue (only with `keep_played`: nobody else drains it)."""

    def __init__(self, sample_rate: int, block: int, device: int | str | None = None, keep_played: bool = False):
        sd = import_sounddevice("--play")
        self.keep_played = keep_played
        self.sample_rate, self.block, self.underruns, self.played_samples = sample_rate, block, 0, 0
        self._q: queue.Queue[np.ndarray] = queue.Queue()
        self._played: queue.Queue[np.ndarray] = queue.Queue()
        try:
            self._stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=block,
                                           device=device, callback=self._callback)
            self._stream.start()
        except Exception as e:  # sounddevice raises PortAudioError for missing/busy devices
            raise OmniError(f"cannot open the audio output device {device if device is not None else '(default)'}: "
                            f"{e}; list the devices with `omni-run --list-devices`, choose one with "
                            f"--output-device, or close the program holding it") from None

    def _callback(self, outdata, frames, time, status) -> None:
        try:
            outdata[:, 0] = self._q.get_nowait()
            self.played_samples += frames
        except queue.Empty:
            outdata.fill(0)
            self.underruns += 1
        if self.keep_played:
            self._played.put(outdata[:, 0].copy())

    def write(self, pcm: np.ndarray) -> None:
        self._q.put(np.clip(pcm, -1.0, 1.0).astype(np.float32))

    @property
    def busy(self) -> bool:
        """Audio is still queued (the frame in the device's buffer is not counted)."""
        return not self._q.empty()

    def stop(self) -> None:
        """Drop what is queued (barge-in): playback ends after the block already handed to the device."""
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return

    def take_played(self) -> np.ndarray:
        """What the callback has played since the last call (silence included), for echo handling and --record."""
        blocks = []
        while True:
            try:
                blocks.append(self._played.get_nowait())
            except queue.Empty:
                return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

    def close(self) -> None:
        """Let queued audio finish (call `stop` first to cut it), then close the device."""
        while not self._q.empty():
            time.sleep(self.block / self.sample_rate)
        self._stream.stop()
        self._stream.close()
