"""`OmniModel` (immutable: graphs, tokenizer, voices) and `Conversation` (one dialogue's mutable state)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
import json
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .cloning import VoiceCloner, normalize_voice_name, require_cloning
from .contracts import PREFILL_SUFFIX
from .dump import CodeDump
from .errors import OmniError
from .generate import (ContextFull, GenerationOptions, KVCache, ModelState, Speaker, Stepper, generate, prefill,
                       prompt_codes)
from .image import PREPROCESSOR_FILE, ImagePreprocessor, open_rgb, preprocess_image
from .inject import IMAGE_PAD, prompt_features, user_content
from .mimi import FrameBatcher
from .prompt import VOICE_SYSTEM_PROMPT, Message, TextTokenizer
from .session import GraphSession, SessionOptions
from .static_step import BufferCache, StaticStepper
from .speaker import SpeakerEncoder
from .speech import SpeechEncoder, load_audio
from .user_voices import user_voice_names, user_voice_path
from .voices import Voice


# SigLIP opens without prepacked weights: it loads on the first image, over everything else, and prepacking holds two
# copies of its weights while it opens (peak 147 MB over its 87 MB resident; 98 MB unpacked), for 41.3 -> 48.0 ms
# per image (full int8 bundle, 2 threads, side by side). SenseVoice stays packed: it opens first, over little, and
# unpacked its 3 s took 113 -> 129 ms.
UNPACKED_GRAPHS = ("vision",)


def graph_options(name: str, opts: SessionOptions) -> SessionOptions:
    """The session options the runtime opens graph `name` with."""
    return replace(opts, prepack=name not in UNPACKED_GRAPHS)


class OmniModel:
    """The loaded bundle. Shared, never mutated: any number of conversations can use one model."""

    def __init__(self, bundle: Bundle, opts: SessionOptions = SessionOptions()):
        self.bundle, self.config = bundle, bundle.config
        self.tokenizer = TextTokenizer(bundle.root / "tokenizer.json")
        # Load order: opening a graph briefly takes up to ~1.8x its file (parse, initializer copies, prepacking), so
        # the graphs that overshoot their resident size most go first, over the smallest resident set (full int8
        # bundle: load peak 650 MB; 680-795 MB with SenseVoice last, measured). Vision and the cloning graphs load
        # on first use (below).
        self.mimi = self.speech = None
        if bundle.has_graph("sensevoice"):
            self.speech = SpeechEncoder(self._session("sensevoice", opts), bundle.root)
            self.audio_projector = self._session("audio_projector", opts)
        if bundle.has_graph("mimi_decoder"):
            from .contracts import MimiDims
            from .mimi import MimiStreamDecoder
            self.mimi = MimiStreamDecoder(self._session("mimi_decoder", opts), MimiDims.from_dict(bundle.manifest["mimi"]))
        if bundle.has_graph("vision"):
            config = json.loads((bundle.root / PREPROCESSOR_FILE).read_text(encoding="utf-8"))
            self.image_prep = ImagePreprocessor.from_hf_config(config)
        self.talker = GraphSession(bundle.graph_path("talker"), bundle.specs["talker"], opts)
        self.thinker = GraphSession(bundle.graph_path("thinker"), bundle.specs["thinker"], opts)
        self.static = bundle.static  # fixed-shape Thinker/Talker: their context is the bundle's
        self.prefill = {n: self._session(n + PREFILL_SUFFIX, opts) for n in ("thinker", "talker")
                        if bundle.has_graph(n + PREFILL_SUFFIX)}
        self._opts = opts

    @cached_property
    def vision(self) -> GraphSession | None:
        """SigLIP + projector, loaded on first use: only a turn with an image needs it, and it holds ~97 MB resident
        (full int8 bundle, measured), a sixth of the process; opening it takes ~0.3 s, once."""
        return self._session("vision", self._opts) if self.bundle.has_graph("vision") else None

    @cached_property
    def speaker(self) -> SpeakerEncoder | None:
        """CAM++ speaker embeddings (cloning, similarity checks), loaded on first use: a turn never needs them, and
        with the Mimi encoder they would add ~170 MB to every omni-run (int8, measured)."""
        return SpeakerEncoder(self._session("campplus", self._opts)) if self.bundle.has_graph("campplus") else None

    @cached_property
    def cloner(self) -> VoiceCloner | None:
        """Mimi encoder + CAM++ (`omni-voices add`), loaded on first use."""
        if self.speaker is None or not self.bundle.has_graph("mimi_encoder"):
            return None
        return VoiceCloner.from_bundle(self.bundle, self._opts, self.speaker)

    def _session(self, name: str, opts: SessionOptions) -> GraphSession:
        return GraphSession(self.bundle.graph_path(name), self.bundle.specs[name], graph_options(name, opts))

    def require_vision(self) -> None:
        if not self.bundle.has_graph("vision"):
            raise OmniError("this bundle has no vision graph; re-export it with --siglip <siglip2-base-p32-256-ve>")

    def check_image(self, path: Path) -> None:
        """OmniError unless this bundle reads images and `path` is one it accepts (decoded once to be sure)."""
        self.require_vision()
        open_rgb(path, self.image_prep.max_pixels)

    def check_audio(self, path: Path) -> None:
        """OmniError unless this bundle takes spoken questions and `path` is audio it accepts (decoded once)."""
        self.require_speech()
        load_audio(path)

    def encode_image(self, path: Path) -> np.ndarray:
        """Image file -> the Thinker embeddings for its `<|image_pad|>` run, float32 [image_token_len, hidden]."""
        self.require_vision()
        return self.vision.run({"pixel_values": preprocess_image(path, self.image_prep)})["image_embeds"][0]

    def encode_audio(self, wav: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 PCM -> Thinker embeddings float32 [frames, hidden], one per `<|audio_pad|>`. The
        transcript is a second SenseVoice run (`speech.transcribe`: it reads prompt rows before the speech)."""
        self.require_speech()
        rows = self.speech.encode(wav)
        return self.audio_projector.run({"audio_features": rows[None]})["audio_embeds"][0]

    def require_speech(self) -> None:
        """OmniError unless this bundle takes spoken questions (a static bundle never does)."""
        if self.speech is not None:
            return
        if self.static is not None:
            raise OmniError("a static bundle cannot hold the speech encoder (its input length varies), so it takes no "
                            "spoken questions; use a dynamic bundle (omni-export without --static, with --sensevoice "
                            "<SenseVoiceSmall folder>)")
        raise OmniError("this bundle has no speech encoder; re-export it with --sensevoice <SenseVoiceSmall folder>")

    @classmethod
    def load(cls, root: Path, opts: SessionOptions = SessionOptions()) -> OmniModel:
        return cls(Bundle.open(root), opts)

    @property
    def sample_rate(self) -> int:
        """Of the speech this bundle writes (Mimi's rate; 24 kHz for the released codec)."""
        return self.mimi.dims.sample_rate if self.mimi is not None else 24000

    def voice(self, name: str) -> Voice:
        """A bundle preset, else a user voice (`omni-voices add`); a preset wins when both have the name."""
        if name in self.bundle.voices:
            return Voice.load(self.bundle.voice_path(name))
        if name in user_voice_names():
            return Voice.load(user_voice_path(name))
        available = self.bundle.voices + user_voice_names()
        raise OmniError(f"unknown voice {name!r}; available: {', '.join(available) or 'none'} (see --list-voices; "
                        f"add your own with omni-voices add NAME recording.wav)")

    def clone_voice(self, audio: np.ndarray, sample_rate: int, name: str) -> Voice:
        """A recording (int16 or float, mono or [samples, channels]) -> Voice, as upstream's web demo clones; the
        caller decides whether to keep it (`user_voices.save_user_voice`)."""
        require_cloning(self.bundle)
        return self.cloner.clone(audio, sample_rate, normalize_voice_name(name, tuple(self.bundle.voices)))


@dataclass(frozen=True)
class Transcript:
    text: str  # what the speech encoder heard (SenseVoice's CTC transcript of the spoken question)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AudioChunk:
    pcm: np.ndarray  # float32 [k x frame_samples] at 24 kHz: k frames (1 unless respond's mimi_frames_per_call > 1)


@dataclass(frozen=True)
class AudioEnd:
    """The answer's speech is over (its audio stream reached the stop code) while its text may go on: a player can
    finish now instead of waiting, as for late audio, until the text ends too."""


class Withdrawn(Exception):
    """Thrown into `Conversation.respond` (`withdraw`): the answer ends and nothing of it enters the history."""


def withdraw(answer: Iterator) -> None:
    """End an answer the user never heard (a speculative one): unlike `close`, the history stays as it was and the
    late transcript is not made."""
    try:
        answer.throw(Withdrawn())
    except (Withdrawn, StopIteration):
        pass


@dataclass(frozen=True)
class TurnEnd:
    text: str  # the whole reply, as it enters the history
    reason: str  # "eos" (text and audio finished), "length" (max_new_tokens) or "context" (context limit)


# A live answer starts playing as soon as its first frame exists; each next frame takes ~18 ms to make (full-size
# int8: greedy step 7.8 ms + one-frame Mimi 10.7 ms, measured) for 80 ms of audio, so after 4 frames the player is
# some 260 ms ahead: room for the transcript's SenseVoice run (encoding and transcript together took 130-144 ms for
# 1.8-3.2 s questions, measured). Run right after the first frame, it made the loudspeaker run dry (measured live).
LATE_TRANSCRIPT_FRAMES = 4

DEFAULT_CONTEXT = 2048  # KV positions of a dynamic bundle's conversation when none is asked for


class Conversation:
    """One dialogue: KV caches, history and voice. Each `respond` is a turn; later turns reuse the cached prefix."""

    def __init__(self, model: OmniModel, voice: str | None = None, context: int = DEFAULT_CONTEXT):
        if model.static is not None:
            context = model.static.context  # its graphs read exactly this many cache slots
        if context < 16:
            raise ValueError(f"context must be at least 16 positions, got {context}")
        self.model, self.context = model, context
        self.state = ModelState(model.config, context, KVCache if model.static is None else BufferCache)
        self.speaker = Speaker(None, None)
        self.history: list[Message] = []
        if voice is not None:
            v = model.voice(voice)
            self.speaker = Speaker(v.ref_codes, v.talker_spk_emb())
            self.history.append(Message("system", VOICE_SYSTEM_PROMPT))  # as eval_omni.py's voice-clone mode
        if model.static is None:
            self.stepper = Stepper(model.config, model.thinker, model.talker, self.state, self.speaker)
        else:
            self.stepper = StaticStepper(model.config, model.thinker, model.talker, self.state, self.speaker,
                                         model.prefill)

    def prompt_ids(self, user_text: str, open_thinking: bool = False) -> list[int]:
        return self.model.tokenizer.chat_ids(self.history + [Message("user", user_text)], open_thinking)

    def respond(self, user_text: str | None, opts: GenerationOptions, rng: np.random.Generator | None = None,
                decode_audio: bool = True, record: CodeDump | None = None,
                images: tuple[Path, ...] = (), audio: Path | np.ndarray | None = None,
                mimi_frames_per_call: int = 1, late_transcript: bool = False,
                ) -> Iterator[Transcript | TextDelta | AudioChunk | AudioEnd | TurnEnd]:
        """Stream one answer: text deltas as tokens arrive, a 1920-sample chunk per frame. Work happens on iteration.
        `mimi_frames_per_call` > 1: after the first frame, audio comes in chunks of that many frames (less compute
        per frame, the same samples; mimi.FrameBatcher).

        A spoken question's `Transcript` comes first; with `late_transcript` it comes after LATE_TRANSCRIPT_FRAMES
        frames of audio, followed by the text generated meanwhile in one TextDelta: the transcript is a second
        SenseVoice run (about a quarter of the time to the first sound, full-size int8), and a live answer's first sound
        need not wait for it.

        `audio` (a spoken question) gets one `<|audio_pad|>` per encoder frame after the text, and `images` their 64
        `<|image_pad|>` each after that, as upstream's eval prompts. The history keeps plain text (upstream's demos
        do): the speech's transcript, and the text without image placeholders.
        """
        user_text = (user_text or "").strip()
        if not user_text and not images and audio is None:
            raise OmniError("the prompt is empty; type a question")
        if not opts.greedy and rng is None:
            raise ValueError("sampling needs a numpy Generator (rng); pass one or set greedy")
        if decode_audio and self.model.mimi is None:
            raise OmniError("this bundle has no Mimi decoder, so it can emit codes but not audio; re-export it "
                            "with --mimi <folder of kyutai/mimi>, or run without audio output")
        wav = None if audio is None else np.asarray(audio, np.float32) if isinstance(audio, np.ndarray) \
            else load_audio(audio)
        audio_embeds = None if wav is None else self.model.encode_audio(wav)
        heard = None if wav is not None else ""  # None: the transcript is still to be made
        if wav is not None and not (late_transcript and decode_audio):
            heard = self.model.speech.transcribe(wav)
            yield Transcript(heard)
        pending = ""  # text generated before the late transcript, held so that the transcript is shown first

        def transcript():
            nonlocal heard
            heard = self.model.speech.transcribe(wav)
            yield Transcript(heard)
            if pending:
                yield TextDelta(pending)

        sent = 0  # audio samples yielded

        def audio_chunk(pcm: np.ndarray | None):
            nonlocal sent
            if pcm is not None:
                yield AudioChunk(pcm)
                sent += len(pcm)
                if heard is None and sent >= LATE_TRANSCRIPT_FRAMES * self.model.mimi.dims.frame_samples:
                    yield from transcript()
        image_embeds = [self.model.encode_image(p) for p in images]
        content = user_content(user_text, None if audio_embeds is None else len(audio_embeds), len(images),
                               self.model.config)
        ids = self.prompt_ids(content, opts.open_thinking)
        features = prompt_features(ids, self.model.config, audio_embeds, image_embeds)
        if len(ids) >= self.context:
            raise OmniError(self._context_full_message(len(ids)))
        if record is not None:
            record.prompt_ids[:] = ids
        frames = FrameBatcher(self.model.mimi, mimi_frames_per_call) if decode_audio else None
        text_ids: list[int] = []
        shown, steps = "", 0
        tok = self.model.tokenizer
        try:
            try:
                for step in generate(self.stepper, ids, self.speaker, opts, rng, record, features):
                    steps += 1
                    if step.token is not None and step.token != self.model.config.eos_token_id:
                        text_ids.append(step.token)
                        text = tok.decode(text_ids)
                        if not text.endswith("\ufffd") and len(text) > len(shown):
                            if heard is None:
                                pending += text[len(shown):]
                            else:
                                yield TextDelta(text[len(shown):])
                            shown = text
                    if step.frame is not None and frames is not None:
                        yield from audio_chunk(frames.push(step.frame))
                    elif step.audio_ended and frames is not None:
                        pcm, frames = frames.flush(), None
                        yield from audio_chunk(pcm)
                        yield AudioEnd()
                # the loop only stops before max_new_tokens when text and all codebooks have finished
                reason = "eos" if steps < opts.max_new_tokens else "length"
            except ContextFull:
                reason = "context"
            yield from audio_chunk(frames.flush() if frames is not None else None)  # frames held for a fuller call
            if heard is None:  # no audio came
                yield from transcript()
        except Withdrawn:
            return
        except GeneratorExit:  # closed early (barge-in): the turn enters the history as far as it was generated
            self._commit(user_text, heard if heard is not None else self.model.speech.transcribe(wav), content,
                         tok.decode(text_ids))
            raise
        reply = tok.decode(text_ids)
        self._commit(user_text, heard, content, reply)
        yield TurnEnd(reply, reason)

    def _context_full_message(self, prompt_tokens: int) -> str:
        if self.model.static is None:
            return (f"the prompt is {prompt_tokens} tokens but the context holds {self.context}; start a new "
                    f"conversation or raise --context")
        room = 1 << (prompt_tokens + 512).bit_length()  # the prompt and an answer of a few hundred tokens
        return (f"the prompt is {prompt_tokens} tokens but this static bundle's context is fixed at {self.context} "
                f"(--context cannot change it); start a new conversation, or re-export the bundle with "
                f"`omni-export --static --context {room}`")

    def _commit(self, user_text: str, heard: str, content: str, reply: str) -> None:
        said = " ".join(t for t in (user_text, heard) if t) or content.replace(IMAGE_PAD, "").strip()
        self.history += [Message("user", said), Message("assistant", reply)]

    def prefill_history(self, open_thinking: bool = False) -> int:
        """Compute the cache of the next spoken question's prompt up to its speech (the history and the user turn's
        opening), so that the question itself prefills only its speech and the assistant's opening. For the idle
        moments of a live conversation: each turn's history changes from its user message on (the speech becomes
        its transcript): 150-190 positions per turn with 40-token answers, 60-130 ms full-size int8 (measured). Under a voice with reference codes only the
        Thinker is prefilled: those codes sit under the end of the prompt, so the Talker's inputs depend on the
        question's length. Returns the Thinker positions computed."""
        cfg = self.model.config
        ids = self.prompt_ids(user_content(None, 1, 0, cfg), open_thinking)
        head = np.asarray(ids[:ids.index(cfg.audio_token_id)], np.int64)
        if not 0 < len(head) < self.context:
            return 0
        codes = None if self.speaker.ref_codes is not None else \
            prompt_codes(cfg, len(head) + 1, self.speaker)[:, :len(head)]  # all pads: a speaker code goes at the end
        prefill(self.stepper, head, codes)
        return len(head) - self.state.reused

    def forget_oldest(self, room: int) -> int:
        """Drop the oldest exchanges (a system message stays) until the history leaves `room` positions of the
        context free: a live conversation goes on past the context, and its next question and answer need the room.
        Returns how many messages were dropped."""
        first = next((i for i, m in enumerate(self.history) if m.role != "system"), len(self.history))
        dropped = 0
        while first < len(self.history) and len(self.prompt_ids("")) + room > self.context:
            del self.history[first:first + 2]  # a question and its answer
            dropped += 2
        return dropped

    def truncate_history(self, length: int) -> None:
        """Forget the turns after the first `length` messages (a prepared answer the user never heard); the next
        turn recomputes the cache from the first changed position."""
        del self.history[length:]

    def amend_last_reply(self, text: str) -> None:
        """Replace the last answer in the history (an interrupted answer keeps only what the user heard); the next
        turn recomputes the cache from the first changed position."""
        if not self.history or self.history[-1].role != "assistant":
            raise ValueError("there is no answer in the history to amend")
        self.history[-1] = Message("assistant", text)
