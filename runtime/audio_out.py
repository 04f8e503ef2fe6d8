"""Speech output: a WAV file written frame by frame, and live playback through sounddevice (imported lazily)."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from .atomic_file import AtomicFile, check_output_path
from .errors import OmniError


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
    """16-bit PCM WAV, appended as frames arrive so a long answer never sits in memory. Samples are clipped.

    Written to a temporary file beside `path`: `close` completes it and moves it into place, `discard` drops it (a
    failed run leaves an existing file untouched and no new one). As a context manager: close when the block ends
    normally, discard when it raises."""

    def __init__(self, path: Path, sample_rate: int, channels: int = 1, flag: str = "--out"):
        check_output_path(path, flag, (".wav",))
        self.path = Path(path)
        self._file = AtomicFile(self.path)
        try:
            self._f = sf.SoundFile(str(self._file.tmp), mode="w", samplerate=sample_rate, channels=channels,
                                   subtype="PCM_16", format="WAV")
        except BaseException:
            self._file.discard()
            raise
        self.samples = 0

    def write(self, pcm: np.ndarray) -> None:
        """[n] samples, or [n, channels]."""
        try:
            self._f.write(np.clip(pcm, -1.0, 1.0))
        except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError: disk full, quota
            self.discard()
            raise OmniError(f"cannot write {self.path}: {e}; free some space or choose another path") from None
        self.samples += len(pcm)

    def close(self) -> None:
        """Finish the header and move the file into place (again: nothing)."""
        if not self._f.closed:
            self._f.close()
            self._file.commit()

    def discard(self) -> None:
        """Drop what was written; an existing file at `path` stays as it was."""
        if not self._f.closed:
            self._f.close()
        self._file.discard()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


class Player:
    """Plays 24 kHz audio as it is decoded, through a jitter buffer that starts with the first write. Written audio is
    cut into fixed `block`s; the device callback only moves one block out of the play queue (silence when none is
    queued, counted in `underruns` while an answer is still coming) and, as the echo reference for live conversation,
    into the played queue (only with `keep_played`: nobody else drains it)."""

    def __init__(self, sample_rate: int, block: int, device: int | str | None = None, keep_played: bool = False):
        sd = import_sounddevice("--play")
        self.keep_played = keep_played
        self.sample_rate, self.block, self.underruns, self.played_samples = sample_rate, block, 0, 0
        self._q: queue.Queue[np.ndarray] = queue.Queue()
        self._played: queue.Queue[np.ndarray] = queue.Queue()
        self._pending = np.zeros(0, np.float32)
        self._expecting = False  # an answer is being written: running dry now is an underrun
        try:
            self._stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=block,
                                           latency="low", device=device, callback=self._callback)
            self._stream.start()
        except Exception as e:  # sounddevice raises PortAudioError for missing/busy devices
            raise OmniError(f"cannot open the audio output device {device if device is not None else '(default)'} "
                            f"({e}); list the devices with `omni-run --list-devices`, choose one with "
                            f"--output-device, or close the program holding it") from None

    def _callback(self, outdata, frames, time, status) -> None:
        try:
            outdata[:, 0] = self._q.get_nowait()
            self.played_samples += frames
        except queue.Empty:
            outdata.fill(0)
            self.underruns += self._expecting
        if self.keep_played:
            self._played.put(outdata[:, 0].copy())

    def write(self, pcm: np.ndarray) -> None:
        self._expecting = True
        pcm = np.concatenate([self._pending, np.clip(pcm, -1.0, 1.0).astype(np.float32)])
        n = len(pcm) // self.block
        for i in range(n):
            self._q.put(pcm[i * self.block:(i + 1) * self.block])
        self._pending = pcm[n * self.block:]

    def finish(self) -> None:
        """The answer's audio is all written: the last partial block goes out padded, and running dry is no
        underrun."""
        if len(self._pending):
            self._q.put(np.pad(self._pending, (0, self.block - len(self._pending))))
            self._pending = np.zeros(0, np.float32)
        self._expecting = False

    @property
    def busy(self) -> bool:
        """Audio is still queued (the blocks in the device's buffer are not counted)."""
        return not self._q.empty() or len(self._pending) > 0

    def stop(self) -> None:
        """Cut (barge-in): drop what is queued; the stream keeps running, so only the device's own buffer (a block
        or two at `latency="low"`) still plays, and is counted as heard. Not aborting keeps the played stream on the
        microphone's clock: an abort and restart skips time, which moves the echo canceller's reference and makes it
        re-converge (measured on a real sound server: the next answer's echo then interrupted it)."""
        self._pending = np.zeros(0, np.float32)
        self._expecting = False
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break

    def take_played(self) -> np.ndarray:
        """What the callback has played since the last call (silence included), for echo handling and --record."""
        blocks = []
        while True:
            try:
                blocks.append(self._played.get_nowait())
            except queue.Empty:
                return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

    def close(self) -> None:
        """Let written audio finish (call `stop` first to cut it), then close the device."""
        self.finish()
        while not self._q.empty() and self._stream.active:
            time.sleep(self.block / self.sample_rate)
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:  # PortAudioError: the device or sound server is gone; there is nothing left to close
            pass
