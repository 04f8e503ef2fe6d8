"""Speech input without torch: audio file -> 16 kHz mono -> SenseVoice features -> encoder graph -> rows/transcript.

Front end, as upstream builds it (MiniMind-O `OmniDataset.process_audio` + funasr `WavFrontend`):
soundfile decode (float64) -> channel mean -> resample to 16 kHz (librosa's default, soxr HQ, length
ceil(N * 16000 / rate)) -> float32 -> x 32768 -> Kaldi fbank (kaldi-native-fbank: hamming, 80 mel, 25/10 ms,
snip_edges, dither 0 — upstream leaves funasr's dither 1.0 on, i.e. adds random noise; we do not) -> LFR
(7 frames stacked, hop 6, 3 copies of frame 0 in front, last frame repeated) -> CMVN (x + shift) * scale.

Input policy: a file that soundfile cannot decode, holds no samples, is shorter than one 25 ms analysis window,
is digitally silent (peak at most one 16-bit step) or is longer than `max_seconds` (default 60 s, i.e. 1000 audio
tokens) is rejected with an OmniError; audio is never truncated. Each second gives ~16.7 audio tokens
(`audio_token_count`), which the caller checks against the context it has left.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OmniError
from .session import GraphSession

SAMPLE_RATE = 16000
MAX_SECONDS = 60.0
SILENCE_PEAK = 1.0 / 32768  # one step of 16-bit audio: anything at or below it is digital silence
CMVN_FILE = "sensevoice_cmvn.npy"  # [2, 560] float32: AddShift, Rescale (from am.mvn)
QUERIES_FILE = "sensevoice_queries.npy"  # [16, 560] float32: the checkpoint's `embed.weight` (prompt rows)
VOCAB_FILE = "sensevoice_vocab.json"  # the CTC head's pieces in id order
LANGUAGES = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}  # query rows
EVENT_EMOTION_ROWS = (1, 2)
TEXTNORM_ROWS = {True: 14, False: 15}  # withitn / woitn
BLANK_ID = 0


@dataclass(frozen=True)
class FrontendOptions:
    """SenseVoiceSmall's released `frontend_conf`; export refuses a folder whose config.yaml differs."""

    sample_rate: int = SAMPLE_RATE
    window: str = "hamming"
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    lfr_m: int = 7
    lfr_n: int = 6
    snip_edges: bool = True

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def hop_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)


def audio_token_count(num_samples: int, opts: FrontendOptions = FrontendOptions()) -> int:
    """Encoder rows (= `<|audio_pad|>` placeholders) for `num_samples` of 16 kHz audio: ceil(F / lfr_n)."""
    if num_samples < opts.window_samples:
        return 0
    frames = 1 + (num_samples - opts.window_samples) // opts.hop_samples
    return math.ceil(frames / opts.lfr_n)


def load_audio(path: str | Path, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Decode any file soundfile reads (wav, flac, ogg, mp3; any rate and channel count) to float32 mono 16 kHz."""
    import soundfile as sf

    path = Path(path)
    if path.is_dir():
        raise OmniError(f"audio file {path} is a folder; pass a WAV, FLAC, OGG or MP3 file")
    if not path.is_file():
        raise OmniError(f"audio file {path} does not exist")
    if path.stat().st_size == 0:
        raise OmniError(f"audio file {path} is empty (0 bytes); record or export it again")
    try:
        info = sf.info(path)
        if info.frames > max_seconds * info.samplerate:
            raise OmniError(f"{path} is {info.duration:.1f} s long; the limit is {max_seconds:g} s "
                            f"({audio_token_count(int(max_seconds * SAMPLE_RATE))} audio tokens). Audio is not "
                            f"truncated: trim or split the file")
        # sf.read as upstream calls it: reading mp3 through an open SoundFile differs from it by 1 ulp
        data, rate = sf.read(path, dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OmniError(f"cannot read {path} as audio ({reason}); pass a WAV, FLAC, OGG or MP3 file") from None
    if data.shape[0] == 0:
        raise OmniError(f"{path} holds no audio samples (0 s); record or export it again")
    wav = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        wav = resample(wav, rate)
    wav = wav.astype(np.float32)
    opts = FrontendOptions()
    if len(wav) < opts.window_samples:
        raise OmniError(f"{path} is {1000 * len(wav) / SAMPLE_RATE:.1f} ms long; at least "
                        f"{opts.frame_length_ms:g} ms (one analysis window) is needed")
    if float(np.max(np.abs(wav))) <= SILENCE_PEAK:
        raise OmniError(f"{path} is silent (peak at most one 16-bit step); check the recording or the input level")
    return wav


def resample(wav: np.ndarray, rate: int) -> np.ndarray:
    """To 16 kHz as upstream's librosa.resample does by default: soxr HQ, length fixed to ceil(N * 16000 / rate)."""
    import soxr

    out = soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ")
    n = math.ceil(len(wav) * SAMPLE_RATE / rate)
    return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


def fbank(wav: np.ndarray, opts: FrontendOptions = FrontendOptions()) -> np.ndarray:
    """Kaldi log-mel filterbank [F, n_mels] of float audio in [-1, 1] (scaled to 16-bit range first), no dither."""
    import kaldi_native_fbank as knf

    o = knf.FbankOptions()
    o.frame_opts.samp_freq = opts.sample_rate
    o.frame_opts.frame_length_ms = opts.frame_length_ms
    o.frame_opts.frame_shift_ms = opts.frame_shift_ms
    o.frame_opts.window_type = opts.window
    o.frame_opts.snip_edges = opts.snip_edges
    o.frame_opts.dither = 0.0
    o.mel_opts.num_bins = opts.n_mels
    o.energy_floor = 0.0
    online = knf.OnlineFbank(o)
    online.accept_waveform(opts.sample_rate, np.asarray(wav, np.float32) * np.float32(32768))
    online.input_finished()
    n = online.num_frames_ready
    if n == 0:
        return np.zeros((0, opts.n_mels), np.float32)
    return np.stack([online.get_frame(i) for i in range(n)]).astype(np.float32)


def stack_lfr(feats: np.ndarray, m: int, n: int) -> np.ndarray:
    """Low frame rate stacking: row r = frames 6r-3 .. 6r+3 (m=7, n=6), clamped to the first/last frame."""
    count, dim = feats.shape
    rows = math.ceil(count / n)
    idx = np.arange(rows)[:, None] * n + np.arange(m)[None, :] - (m - 1) // 2
    return feats[np.clip(idx, 0, count - 1)].reshape(rows, m * dim)


def parse_am_mvn(text: str, source: str = "am.mvn") -> np.ndarray:
    """[2, dim] float32 (AddShift, Rescale) from a Kaldi nnet1 am.mvn: the numbers between `[` and `]` on the
    `<LearnRateCoef>` line that follows each of `<AddShift>` and `<Rescale>`."""
    lines = [line.split() for line in text.splitlines()]
    found: dict[str, list[str]] = {}
    for i, tokens in enumerate(lines[:-1]):
        if tokens and tokens[0] in ("<AddShift>", "<Rescale>"):
            nxt = lines[i + 1]
            if nxt and nxt[0] == "<LearnRateCoef>" and "[" in nxt and nxt[-1] == "]":
                found[tokens[0]] = nxt[nxt.index("[") + 1:-1]
    if set(found) != {"<AddShift>", "<Rescale>"} or len(found["<AddShift>"]) != len(found["<Rescale>"]):
        raise ValueError(f"{source} is not a SenseVoice am.mvn (needs <AddShift> and <Rescale> rows of equal "
                         f"length); restore it from FunAudioLLM/SenseVoiceSmall")
    return np.array([found["<AddShift>"], found["<Rescale>"]], dtype=np.float32)


def features(wav: np.ndarray, cmvn: np.ndarray, opts: FrontendOptions = FrontendOptions()) -> np.ndarray:
    """Encoder input rows [T, n_mels * lfr_m] float32 for 16 kHz mono audio."""
    feats = stack_lfr(fbank(wav, opts), opts.lfr_m, opts.lfr_n)
    if len(feats) == 0:
        raise OmniError(f"audio of {len(wav)} samples is shorter than one {opts.frame_length_ms:g} ms window")
    return ((feats + cmvn[0]) * cmvn[1]).astype(np.float32)


def ctc_greedy(logits: np.ndarray, vocab: list[str], blank: int = BLANK_ID) -> str:
    """Best path: argmax per row, merge repeats, drop blanks, join the SentencePiece pieces. Tags such as
    `<|en|>` and control pieces are dropped; byte pieces `<0xNN>` are reassembled."""
    ids = logits.argmax(axis=-1)
    keep = np.concatenate([[True], ids[1:] != ids[:-1]]) & (ids != blank)
    out = bytearray()
    for i in ids[keep]:
        piece = vocab[int(i)]
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            out.append(int(piece[3:5], 16))
        elif not (piece.startswith("<") and piece.endswith(">")):
            out += piece.encode("utf-8")
    return out.decode("utf-8", errors="replace").replace("\u2581", " ").strip()


class SpeechEncoder:
    """The sensevoice graph with its side files: audio -> encoder rows for the projector, or a transcript."""

    def __init__(self, session: GraphSession, root: Path, opts: FrontendOptions = FrontendOptions()):
        self.session, self.opts = session, opts
        self.cmvn = np.load(Path(root) / CMVN_FILE)
        self.queries = np.load(Path(root) / QUERIES_FILE)
        self.vocab = json.loads((Path(root) / VOCAB_FILE).read_text(encoding="utf-8"))

    def features(self, wav: np.ndarray) -> np.ndarray:
        return features(wav, self.cmvn, self.opts)

    def run(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[T, 560] rows -> (encoder_out [T, 512], ctc_logits [T, vocab]) for one unpadded clip."""
        out = self.session.run({"features": feats[None].astype(np.float32, copy=False),
                                "mask": np.ones((1, len(feats)), dtype=bool)})
        return out["encoder_out"][0], out["ctc_logits"][0]

    def encode(self, wav: np.ndarray) -> np.ndarray:
        """What upstream projects into the prompt: the encoder rows [T, 512] of the bare speech (no prompts)."""
        return self.run(self.features(wav))[0]

    def transcribe(self, wav: np.ndarray, language: str = "auto", itn: bool = False) -> str:
        """SenseVoice's own ASR path: 4 prompt rows (language, event, emotion, text norm) before the speech."""
        if language not in LANGUAGES:
            raise OmniError(f"unknown transcript language {language!r}; use one of {', '.join(LANGUAGES)}")
        rows = [LANGUAGES[language], *EVENT_EMOTION_ROWS, TEXTNORM_ROWS[itn]]
        feats = np.concatenate([self.queries[rows], self.features(wav)])
        return ctc_greedy(self.run(feats)[1], self.vocab)
