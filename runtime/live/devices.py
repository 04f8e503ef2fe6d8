"""Live audio behind a small interface, for `omni-run --mic` (and any other front end of the live session).

A microphone gives fixed blocks of 16 kHz float32 audio (`read` waits for the next one, `poll` returns those ready
now, `backlog` counts what was captured and not yet returned); a speaker takes 24 kHz frames into a jitter buffer that
starts with the first frame (`write`), can be cut (`stop`, for barge-in), is told when an answer's audio is complete
(`finish`), reports whether audio is still queued (`busy`) and hands back what it played (`take_played`, the echo
reference).

The sounddevice backend (imported lazily) runs both streams with PortAudio's low-latency settings and 10-20 ms
blocks: the input is captured at the device's native rate and resampled to 16 kHz with soxr; the output is
`audio_out.Player`. Device names that PortAudio does not know are taken for the sound server's own (PulseAudio or
PipeWire source/sink names) and routed through its `pulse` device. Simulated devices are in `live.sim`.
"""

from __future__ import annotations

import os
import queue
from typing import Protocol

import numpy as np

from ..audio_out import Player, import_sounddevice
from ..contracts import VAD_CHUNK
from ..errors import OmniError
from ..speech import SAMPLE_RATE

MIC_RATE = SAMPLE_RATE  # blocks feed the VAD and SenseVoice, both at the speech front end's rate
BLOCK = VAD_CHUNK  # 32 ms: one VAD decision per block
CAPTURE_SECONDS = 0.01  # device block: the input's share of the barge-in latency
PLAYBACK_BLOCK = 480  # 20 ms at 24 kHz: what the speaker has queued at the device when it is cut


class Microphone(Protocol):
    block: int

    @property
    def backlog(self) -> int:
        """Samples captured but not yet returned by `read` / `poll`: how far behind the device the caller is. The
        echo reference needs it to pair each block with what was playing when it was captured."""

    def read(self) -> np.ndarray | None:
        """The next block, waiting for it; None once the input has ended."""

    def poll(self) -> list[np.ndarray]:
        """The blocks ready now, without waiting."""

    def close(self) -> None: ...


class Speaker(Protocol):
    sample_rate: int
    played_samples: int  # samples of written audio played so far (underrun silence excluded)
    underruns: int  # device blocks that found no audio while an answer was still coming

    def write(self, pcm: np.ndarray) -> None: ...

    def finish(self) -> None:
        """The answer's audio is all written: running dry after it is not an underrun."""

    @property
    def busy(self) -> bool: ...

    def stop(self) -> None: ...

    def take_played(self) -> np.ndarray: ...

    def close(self) -> None: ...


def list_devices() -> str:
    devices = import_sounddevice("--list-devices").query_devices()
    return str(devices) if len(devices) else ("PortAudio finds no audio devices on this machine (no sound card, or "
                                              "no permission to use it)")


def resolve_device(device: int | str | None, kind: str) -> int | str | None:
    """A PortAudio device, or a sound-server name routed through PortAudio's `pulse` device (PULSE_SOURCE /
    PULSE_SINK are read by the ALSA pulse plugin when the stream opens)."""
    sd = import_sounddevice("--mic")
    flag = "--input-device" if kind == "input" else "--output-device"
    if device is None:
        return None
    try:
        sd.query_devices(device, kind)
        return device
    except Exception as e:  # ValueError: no such device; PortAudioError: no devices at all
        reason = e
    if isinstance(device, str) and any(d["name"] == "pulse" for d in sd.query_devices()):
        os.environ["PULSE_SOURCE" if kind == "input" else "PULSE_SINK"] = device
        return "pulse"
    raise OmniError(f"no audio {kind} device {device!r} ({reason}); list them with `omni-run --list-devices` (or "
                    f"`pactl list short {'sources' if kind == 'input' else 'sinks'}` for the sound server's names) "
                    f"and choose one with {flag}")


class DeviceMicrophone:
    """Captures at the device's native rate (what it runs at without conversion) in 10 ms device blocks and resamples
    to 16 kHz. `read` raises when the device stops sending audio (the sound server or device went away)."""

    def __init__(self, device: int | str | None = None, block: int = BLOCK, timeout: float = 2.0):
        import soxr

        sd = import_sounddevice("--mic")
        device = resolve_device(device, "input")
        name = device if device is not None else "(default)"
        try:
            rate = int(sd.query_devices(device, "input")["default_samplerate"])
        except Exception as e:  # ValueError (no such device) or PortAudioError (no devices at all)
            raise OmniError(f"no audio input device {name} ({e}); list the devices with `omni-run --list-devices` "
                            f"and choose one with --input-device") from None
        self.block, self.rate, self.timeout = block, rate, timeout
        self._q: queue.Queue[np.ndarray] = queue.Queue()
        self._resampler = soxr.ResampleStream(rate, MIC_RATE, 1, dtype="float32") if rate != MIC_RATE else None
        self._pending = np.zeros(0, np.float32)
        self._ready: list[np.ndarray] = []
        try:
            self._stream = sd.InputStream(samplerate=rate, channels=1, dtype="float32", device=device,
                                          blocksize=round(rate * CAPTURE_SECONDS), latency="low",
                                          callback=self._callback)
            self._stream.start()
        except Exception as e:  # PortAudioError: busy or vanished device
            raise OmniError(f"cannot open the audio input device {name} at {rate} Hz ({e}); close the program "
                            f"holding it or choose another with --input-device") from None

    def _callback(self, indata, frames, time, status) -> None:
        self._q.put(indata[:, 0].copy())

    @property
    def backlog(self) -> int:
        queued = self._q.qsize() * round(self.rate * CAPTURE_SECONDS) * MIC_RATE // self.rate
        return queued + len(self._pending) + len(self._ready) * self.block

    def _cut(self, raw: np.ndarray) -> list[np.ndarray]:
        pcm = self._resampler.resample_chunk(raw) if self._resampler is not None else raw
        self._pending = np.concatenate([self._pending, pcm])
        n = len(self._pending) // self.block
        blocks = [self._pending[i * self.block:(i + 1) * self.block] for i in range(n)]
        self._pending = self._pending[n * self.block:]
        return blocks

    def read(self) -> np.ndarray | None:
        while not self._ready:
            try:
                raw = self._q.get(timeout=self.timeout)
            except queue.Empty:
                raise OmniError(f"the microphone sent no audio for {self.timeout:g} s: the sound server or the "
                                f"device went away; check it and start omni-run again") from None
            self._ready += self._cut(raw)
        return self._ready.pop(0)

    def poll(self) -> list[np.ndarray]:
        while True:
            try:
                self._ready += self._cut(self._q.get_nowait())
            except queue.Empty:
                blocks, self._ready = self._ready, []
                return blocks

    def close(self) -> None:
        try:
            self._stream.abort()
            self._stream.close()
        except Exception:  # PortAudioError: the device or sound server is gone; there is nothing left to close
            pass


def device_speaker(sample_rate: int, device: int | str | None = None) -> Player:
    return Player(sample_rate, PLAYBACK_BLOCK, resolve_device(device, "output"), keep_played=True)
