"""Voice cloning without torch: a short recording -> `Voice` (Mimi reference codes + CAM++ speaker embedding).

Follows upstream's web demo (`build_clone_voice`, `validate_clone_audio`, `normalize_voice_name`):

1. mono 16-bit PCM, at most the first 6 s (the demo's recorder stops at 6 s); shorter than 1 s is rejected;
2. pydub's `speedup(playback_speed=1.5, chunk_size=150, crossfade=25)` (re-stated in `speedup`; upstream does not
   say why, the demo only asks users to read naturally), kept so that clones match upstream's;
3. resampled to 24 kHz (Mimi) and 16 kHz (CAM++) — with soxr here, where pydub uses audioop's cruder `ratecv`;
4. the 16 kHz signal must be >= 1.8 s long, loud enough, not stationary noise and not clipped;
5. Mimi encodes the 24 kHz clip; the reference keeps the first 8 codebooks of at most 300 frames (24 s);
6. CAM++ embeds the 16 kHz clip (`SpeakerEncoder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from .bundle import Bundle
from .errors import OmniError
from .session import GraphSession, SessionOptions
from .speaker import SAMPLE_RATE as SPEAKER_RATE
from .speaker import SpeakerEncoder
from .voices import Voice

DEFAULT_NAME = "voice_clone"  # upstream's name for an unnamed clone
MAX_NAME_CHARS = 24
MIMI_RATE = 24000  # the released Mimi's rate (mimi_encoder_spec is fixed to it)
FRAME_SAMPLES = 1920
CLONING_GRAPHS = ("mimi_encoder", "campplus")


@dataclass(frozen=True)
class CloneOptions:
    """Upstream's web-demo settings."""
    max_seconds: float = 6.0
    min_ms: int = 1000
    playback_speed: float = 1.5
    chunk_ms: int = 150
    crossfade_ms: int = 25
    min_seconds_after_speedup: float = 1.8
    max_ref_frames: int = 300


def normalize_voice_name(name: str | None, reserved: tuple[str, ...] = ()) -> str:
    """Whitespace collapsed; empty -> "voice_clone"; at most 24 characters; not "default" nor a preset's name.
    Names become file names, so path separators and leading dots are refused as well."""
    name = " ".join(str(name or "").split()) or DEFAULT_NAME
    if len(name) > MAX_NAME_CHARS:
        raise OmniError(f"voice name {name!r} is {len(name)} characters long; use at most {MAX_NAME_CHARS}")
    if name.lower() == "default":
        raise OmniError("'default' is reserved (it means the model's own voice); choose another name")
    if name in reserved:
        raise OmniError(f"{name!r} is already a preset voice of the bundle; choose another name")
    if any(c in name for c in "/\\\0") or name.startswith("."):
        raise OmniError(f"voice name {name!r} may not contain '/' or '\\' or start with '.'; choose another name")
    return name


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """[N] or [N, channels] (soundfile's layout), int16 or float in [-1, 1] -> mono int16 (channels averaged and
    rounded down, as pydub's `set_channels(1)`; floats scaled by 32768)."""
    a = np.asarray(audio)
    if a.ndim not in (1, 2) or not (a.dtype == np.int16 or np.issubdtype(a.dtype, np.floating)):
        raise OmniError(f"audio must be int16 or float, [samples] or [samples, channels]; got {a.dtype} {a.shape}")
    scale = 1.0 if a.dtype == np.int16 else 32768.0
    x = a.astype(np.float64) * scale
    if x.ndim == 2:
        x = x.mean(axis=1)
    return np.clip(np.floor(x), -32768, 32767).astype(np.int16)


def _mul(x: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """audioop.mul on 16-bit samples: scale, clip, round towards minus infinity."""
    return np.floor(np.clip(x * factor, -32768, 32767))


def speedup(pcm: np.ndarray, rate: int, speed: float = 1.5, chunk_ms: int = 150, crossfade_ms: int = 25
            ) -> np.ndarray:
    """pydub's `effects.speedup` on int16 PCM: cut the audio into (chunk + removed) ms pieces, drop the end of every
    piece but the last, and join them with linear crossfades (gain 1 -> 1e-6 and 1e-6 -> 1, i.e. -120 dB, per
    sample, saturating sum). Positions are whole milliseconds converted to samples as pydub does
    (int(ms * rate / 1000)); exact for rates that are multiples of 1 kHz."""
    keep = 1.0 / speed
    if speed < 2.0:
        remove = int(chunk_ms * (1 - keep) / keep)
    else:
        remove, chunk_ms = int(chunk_ms), int(keep * chunk_ms / (1 - keep))
    crossfade = min(crossfade_ms, remove - 1)

    def at(ms: float) -> int:
        return int(ms * (rate / 1000.0))

    def ms_len(x: np.ndarray) -> int:
        return round(1000 * (len(x) / rate))

    def ms_slice(x: np.ndarray, start: int, end: int) -> np.ndarray:
        length = ms_len(x)
        start, end = (length + v if v < 0 else min(v, length) for v in (start, end))
        out = x[at(start):at(end)]
        return np.pad(out, (0, at(end) - at(start) - len(out)))  # pydub fills <= 2 ms with silence

    x = np.asarray(pcm, np.int16).astype(np.float64)
    step = chunk_ms + remove
    n_chunks = math.ceil(ms_len(x) / step)
    if n_chunks < 2:
        raise OmniError(f"the recording ({len(x) / rate:.2f} s) is too short to speed up; record at least "
                        f"{step / 1000:.2f} s")
    chunks = [ms_slice(x, i * step, (i + 1) * step) for i in range(n_chunks)]
    trim = remove - crossfade
    body = [ms_slice(c, 0, -trim) for c in chunks[:-1]]
    fade_samples = crossfade * (rate / 1000.0)
    ramp = np.arange(int(fade_samples)) / fade_samples
    out = body[0]
    for piece in body[1:]:
        fade_out = _mul(ms_slice(out, -crossfade, ms_len(out))[:len(ramp)], 1.0 + (1e-6 - 1.0) * ramp)
        fade_in = _mul(ms_slice(piece, 0, crossfade)[:len(ramp)], 1e-6 + (1.0 - 1e-6) * ramp)
        mixed = np.clip(fade_out + fade_in, -32768, 32767)
        out = np.concatenate([ms_slice(out, 0, -crossfade), mixed, ms_slice(piece, crossfade, ms_len(piece))])
    return np.concatenate([out, chunks[-1]]).astype(np.int16)


def _resample(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    """int16 -> float32 in [-1, 1) at `target` Hz (soxr HQ), kept on the 16-bit grid as upstream's s16 segments."""
    x = pcm.astype(np.float32) / 32768.0
    y = x if rate == target else soxr.resample(x, rate, target)
    return (np.clip(np.round(y * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def prepare_reference(audio: np.ndarray, sample_rate: int, opts: CloneOptions = CloneOptions()
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Recording -> (24 kHz, 16 kHz) float32 clips, cut, sped up and validated as upstream does."""
    pcm = to_pcm16(audio)[:int(opts.max_seconds * sample_rate)]
    if 1000 * len(pcm) / sample_rate < opts.min_ms:
        raise OmniError(f"the recording is {len(pcm) / sample_rate:.2f} s long; read at least "
                        f"{opts.min_ms / 1000:g} s (3 to 6 s of speech works best)")
    fast = speedup(pcm, sample_rate, opts.playback_speed, opts.chunk_ms, opts.crossfade_ms)
    w24, w16 = _resample(fast, sample_rate, MIMI_RATE), _resample(fast, sample_rate, SPEAKER_RATE)
    validate_reference(w16, opts)
    return w24, w16


def validate_reference(w16: np.ndarray, opts: CloneOptions = CloneOptions()) -> None:
    """Upstream's checks on the sped-up 16 kHz clip: length, level (95th percentile of 50 ms frame RMS), noise
    (20th / 95th percentile: speech has pauses, stationary noise does not) and clipping (peak)."""
    need = int(SPEAKER_RATE * opts.min_seconds_after_speedup)
    if w16.size < need:
        raise OmniError(f"the recording is too short: {w16.size / SPEAKER_RATE:.2f} s after the "
                        f"{opts.playback_speed:g}x speed-up, need {opts.min_seconds_after_speedup:g} s; read the "
                        f"whole sentence (about {need * opts.playback_speed / SPEAKER_RATE:.1f} s or more)")
    x = w16.astype(np.float64)
    frame, hop = 800, 400
    if x.size >= frame:
        frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
        rms = np.sqrt((frames ** 2).mean(axis=1))
    else:
        rms = np.array([np.sqrt((x ** 2).mean())])
    hi, lo = float(np.quantile(rms, 0.95)), float(np.quantile(rms, 0.2))
    if hi < 0.008:
        raise OmniError(f"the recording is too quiet (loud-frame RMS {hi:.4f} < 0.008); move closer to the "
                        f"microphone or raise its input level")
    if hi > 0 and lo / hi > 0.45:
        raise OmniError(f"too much background noise (quiet frames are {lo / hi:.0%} as loud as speech, limit "
                        f"45%); record in a quieter place")
    if np.abs(x).max() > 0.995:
        raise OmniError("the recording clips (peak at full scale); move away from the microphone or lower its "
                        "input level")


def require_cloning(bundle: Bundle) -> None:
    missing = [g for g in CLONING_GRAPHS if not bundle.has_graph(g)]
    if missing:
        raise OmniError(f"bundle {bundle.root} cannot clone voices: it has no {' or '.join(missing)} graph; "
                        f"re-export it with --mimi <mimi folder> --campplus <campplus_cn_common.pt>")


class VoiceCloner:
    """Mimi encoder + CAM++ graphs: `clone(audio, sample_rate, name)` -> Voice."""

    def __init__(self, mimi_encoder: GraphSession, speaker: SpeakerEncoder, opts: CloneOptions = CloneOptions()):
        self.mimi_encoder, self.speaker, self.opts = mimi_encoder, speaker, opts

    @classmethod
    def from_bundle(cls, bundle: Bundle, opts: SessionOptions = SessionOptions(),
                    speaker: SpeakerEncoder | None = None) -> VoiceCloner:
        require_cloning(bundle)
        if speaker is None:
            speaker = SpeakerEncoder(GraphSession(bundle.graph_path("campplus"), bundle.specs["campplus"], opts))
        return cls(GraphSession(bundle.graph_path("mimi_encoder"), bundle.specs["mimi_encoder"], opts), speaker)

    def reference_codes(self, w24: np.ndarray) -> np.ndarray:
        """int64 [8, min(ceil(N / 1920), max_ref_frames)]."""
        codes = self.mimi_encoder.run({"audio": w24.reshape(1, 1, -1).astype(np.float32)})["codes"][0]
        frames = math.ceil(w24.size / FRAME_SAMPLES)
        return np.ascontiguousarray(codes[:, :frames][:, :min(frames, self.opts.max_ref_frames)].astype(np.int64))

    def clone(self, audio: np.ndarray, sample_rate: int, name: str) -> Voice:
        w24, w16 = prepare_reference(audio, sample_rate, self.opts)
        return Voice(name, self.reference_codes(w24), self.speaker.embed(w16).astype(np.float32))


def read_recording(path: str | Path) -> tuple[np.ndarray, int]:
    """Any file soundfile reads -> (int16 [samples] or [samples, channels], sample rate)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise OmniError(f"recording {path} does not exist")
    try:
        data, rate = sf.read(path, dtype="int16", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise OmniError(f"cannot decode {path} ({e}); use wav, flac, ogg or mp3") from None
    return data, int(rate)
