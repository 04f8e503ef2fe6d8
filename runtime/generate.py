"""The Thinker + Talker generation loop: upstream's `stream_generate` protocol on onnxruntime graphs.

    prompt ids ─┐                         ┌─> logits ──> sample text token ──┐
                ├─> thinker(ids, past) ───┤                                  │ (next position's input)
                │                         └─> bridge ─┐                      │
    code column ┴────────────────────────> talker(bridge, codes, past) ─> 8 x logits ─> sample codes ─> ring
                                                                                          └─> frame (8 codes)

One position per step after the prefill; KV caches are preallocated to the context limit and the graphs return
only the new positions' K/V, which are written in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .codes import AudioCodeRing
from .config import ModelConfig
from .dump import CodeDump
from .heap import lazy_zeros
from .sampling import AudioSampling, TextSampling, sample_code, sample_text
from .session import GraphSession


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 512  # bounds text plus the audio tail, as upstream
    text: TextSampling = field(default_factory=TextSampling)
    audio: AudioSampling = field(default_factory=AudioSampling)
    greedy: bool = False  # argmax instead of every sampling draw; penalties unchanged
    open_thinking: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class KVCache:
    """Per-layer K and V preallocated to `capacity` positions, upstream layout [1, capacity, kv_heads, head_dim]."""

    def __init__(self, n_layers: int, capacity: int, kv_heads: int, head_dim: int):
        shape = (1, capacity, kv_heads, head_dim)
        self.keys = [lazy_zeros(shape, np.float32) for _ in range(n_layers)]  # resident as far as written
        self.values = [lazy_zeros(shape, np.float32) for _ in range(n_layers)]
        self.capacity, self.length = capacity, 0

    def past_feeds(self) -> dict[str, np.ndarray]:
        n = self.length  # [:, :n] of a [1, C, ...] array is contiguous: onnxruntime reads it without a copy
        feeds = {f"past_key_{i}": k[:, :n] for i, k in enumerate(self.keys)}
        feeds.update({f"past_value_{i}": v[:, :n] for i, v in enumerate(self.values)})
        return feeds

    def append(self, outputs: dict[str, np.ndarray], t: int) -> None:
        a, b = self.length, self.length + t
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            k[:, a:b] = outputs[f"present_key_{i}"]
            v[:, a:b] = outputs[f"present_value_{i}"]
        self.length = b


class ModelState:
    """Everything one conversation's graphs remember: both KV caches and the inputs that produced them.

    The inputs (text id per Thinker position, 8 codes per Talker position) let the next turn reuse the longest cached
    prefix whose inputs are identical to the new prompt's, so the result equals a fresh prefill of the whole history
    (upstream's way). The Thinker reads only the ids, so its prefix can be longer than the Talker's (a voice's
    reference codes sit under the end of the prompt and move with its length); the Thinker's bridge rows are kept
    so that the Talker can catch up without the Thinker running again.
    """

    def __init__(self, cfg: ModelConfig, capacity: int, cache: type = KVCache):
        """`cache`: the KV cache class (a static bundle's graphs take `static_step.BufferCache`)."""
        self.capacity = capacity
        self.thinker = cache(cfg.num_hidden_layers, capacity, cfg.num_key_value_heads, cfg.head_dim)
        self.talker = cache(cfg.num_talker_hidden_layers, capacity, cfg.talker_num_key_value_heads,
                            cfg.talker_head_dim)
        self.ids = np.zeros(capacity, np.int64)
        self.codes = np.zeros((cfg.num_codebooks, capacity), np.int64)
        self.bridge = lazy_zeros((capacity, cfg.hidden_size), np.float32)  # resident as far as written
        self.reused = 0  # Thinker positions the last prefill took from the cache instead of recomputing

    @property
    def length(self) -> int:
        return self.thinker.length

    def truncate(self, thinker: int, talker: int | None = None) -> None:
        """Keep the first `thinker` Thinker positions and `talker` Talker positions (default: as many), never more
        than are cached, and never more Talker than Thinker positions."""
        self.thinker.length = min(thinker, self.thinker.length)
        self.talker.length = min(thinker if talker is None else talker, self.talker.length, self.thinker.length)

    def reusable_prefix(self, ids: np.ndarray, codes: np.ndarray | None,
                        feature_mask: np.ndarray | None = None) -> tuple[int, int]:
        """(Thinker, Talker) lengths of the cached prefixes whose inputs equal (ids) and (ids, codes), leaving at
        least one position to recompute; codes None: the Talker's is kept as far as the Thinker's (a later prefill
        with codes compares them). Positions that carry injected features never match (their input is not the
        token id)."""
        n = min(self.length, len(ids) - 1)
        same = self.ids[:n] == ids[:n]
        if feature_mask is not None:
            same &= ~feature_mask[:n]
        thinker = n if same.all() else int(np.argmin(same))
        m = min(thinker, self.talker.length)
        if codes is None:
            return thinker, m
        same = (self.codes[:, :m] == codes[:, :m]).all(axis=0)
        return thinker, m if same.all() else int(np.argmin(same))


@dataclass(frozen=True)
class Speaker:
    """The Talker's voice conditioning: reference codes right-aligned under the prompt, plus the speaker embedding."""
    ref_codes: np.ndarray | None  # int64 [8, frames]
    spk_emb: np.ndarray | None  # float32 [1, 192], already rounded as upstream feeds it


def prompt_codes(cfg: ModelConfig, prompt_len: int, speaker: Speaker) -> np.ndarray:
    """The 8 audio rows under the prompt (spec section 6, 'Audio-row prefill buffer'), int64 [8, prompt_len]."""
    buf = np.full((cfg.num_codebooks, prompt_len), cfg.audio_pad_code, np.int64)
    ref_len = 0 if speaker.ref_codes is None else speaker.ref_codes.shape[1]
    fill_start = max(1 if speaker.spk_emb is not None else 0, prompt_len - ref_len)
    if speaker.ref_codes is not None and fill_start < prompt_len:
        buf[:, fill_start:] = speaker.ref_codes[:, ref_len - (prompt_len - fill_start):]
    if speaker.spk_emb is not None and fill_start > 0:
        buf[:, fill_start - 1] = cfg.audio_spk_code
    return buf


FEATURE_ID = -1  # what ModelState.ids records at positions whose input was an injected feature


@dataclass(frozen=True)
class Features:
    """Speech/image embeddings for prompt positions: `embeds` float32 [prompt_len, hidden] used where `mask`
    bool [prompt_len] is true (the placeholder positions), the token embedding elsewhere."""
    embeds: np.ndarray
    mask: np.ndarray


class ContextFull(Exception):
    """Raised inside the loop when the next position would not fit the preallocated context."""


class Stepper:
    """Runs the Thinker and Talker graphs over new positions, keeping `state` and the cached columns in sync."""

    def __init__(self, cfg: ModelConfig, thinker: GraphSession, talker: GraphSession, state: ModelState,
                 speaker: Speaker):
        self.cfg, self.thinker, self.talker, self.state = cfg, thinker, talker, state
        self.spk_emb = speaker.spk_emb if speaker.spk_emb is not None else np.zeros((1, cfg.spk_emb_size), np.float32)
        self.has_spk = speaker.spk_emb is not None
        self._no_features = (np.zeros((1, 1, cfg.hidden_size), np.float32), np.zeros((1, 1), bool))  # decode steps

    def run(self, ids: np.ndarray, codes: np.ndarray, feature_embeds: np.ndarray | None = None,
            feature_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Feed ids int64 [T] to the Thinker after its cached positions, then codes int64 [8, lag + T] to the Talker
        after its own (`lag`: positions it is behind the Thinker); return (text logits [V], audio logits [8, A])."""
        out = self.think(ids, feature_embeds, feature_mask)
        return out["logits"][0], self.talk(codes)["audio_logits"][0]

    def think(self, ids: np.ndarray, feature_embeds: np.ndarray | None = None,
              feature_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The Thinker over new positions (ids int64 [T]); its outputs. The Talker is left behind by T positions."""
        st, t = self.state, len(ids)
        start = st.thinker.length
        if start + t > st.capacity:
            raise ContextFull(f"{start + t} positions exceed the context of {st.capacity}")
        if feature_embeds is None:
            feature_embeds, feature_mask = self._no_features if t == 1 else (
                np.zeros((1, t, self.cfg.hidden_size), np.float32), np.zeros((1, t), bool))
        out = self._run_graph(self.thinker, st.thinker, {"input_ids": ids[None], "feature_embeds": feature_embeds,
                                                         "feature_mask": feature_mask})
        st.thinker.append(out, t)
        st.ids[start:start + t] = np.where(feature_mask[0], FEATURE_ID, ids)
        st.bridge[start:start + t] = out["bridge"][0]
        return out

    def talk(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """The Talker over its next positions (codes int64 [8, T], T at most as many as it is behind the Thinker),
        from the Thinker's bridge rows; its outputs."""
        st, t = self.state, codes.shape[1]
        start = st.talker.length
        if start + t > st.thinker.length:
            raise ValueError(f"the Talker is {st.thinker.length - start} positions behind the Thinker, not {t}")
        spk_mask = (codes[0] == self.cfg.audio_spk_code)[None] & self.has_spk
        aout = self._run_graph(self.talker, st.talker, {"bridge": st.bridge[None, start:start + t],
                                                        "codes": codes[None], "spk_mask": spk_mask,
                                                        "spk_emb": self.spk_emb})
        st.talker.append(aout, t)
        st.codes[:, start:start + t] = codes
        return aout

    def _run_graph(self, session: GraphSession, cache: KVCache, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph call over the feeds' new positions after the cached ones (static bundles override this)."""
        return session.run({**feeds, **cache.past_feeds()})


@dataclass(frozen=True)
class Step:
    """What one generation step yields: the text token (None once EOS has been yielded) and a frame or None."""
    token: int | None
    frame: np.ndarray | None  # int64 [8]
    audio_ended: bool = False  # a codebook has reached its stop code: no frame follows, text may go on


def prefill(stepper: Stepper, ids: np.ndarray, codes: np.ndarray | None, features: Features | None = None
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """Bring the caches to exactly the positions (ids int64 [T], codes int64 [8, T]), recomputing each graph only
    after its longest cached prefix with the same inputs; the last position's (text logits, audio logits).
    codes None: the Thinker alone (the Talker's inputs are not known yet); returns None."""
    st = stepper.state
    embeds, mask = (None, None) if features is None else (features.embeds[None], features.mask[None])
    thinker, talker = st.reusable_prefix(ids, codes, None if mask is None else mask[0])
    st.reused = thinker
    st.truncate(thinker, talker)
    out = stepper.think(ids[thinker:], *((None, None) if mask is None else (embeds[:, thinker:], mask[:, thinker:])))
    if codes is None:
        return None
    return out["logits"][0], stepper.talk(codes[:, st.talker.length:])["audio_logits"][0]


def generate(stepper: Stepper, prompt_ids: list[int], speaker: Speaker, opts: GenerationOptions,
             rng: np.random.Generator | None, record: CodeDump | None = None,
             features: Features | None = None) -> Iterator[Step]:
    """Upstream's stream_generate (spec section 7), step for step. Work happens on iteration.

    Raises ContextFull (after yielding what fit) when the context limit is reached.
    """
    cfg = stepper.cfg
    n_cb = cfg.num_codebooks
    ids = np.asarray(prompt_ids, np.int64)
    logits, audio_logits = prefill(stepper, ids, prompt_codes(cfg, len(ids), speaker), features)

    seen = np.zeros(cfg.vocab_size, bool)
    seen[ids] = True
    ring = AudioCodeRing(n_cb, cfg.audio_pad_code, cfg.codebook_size)
    recent_tokens: list[int] = []  # last generated tokens, for the thinking-mode audio start
    think_end = None if opts.open_thinking else 1
    text_finished, filled = False, False
    column = np.empty(n_cb, np.int64)
    sampled = np.empty(n_cb, bool)
    token: int | None = None  # the previous step's token: the next position's input
    for step in range(opts.max_new_tokens):
        if token is not None:
            logits, audio_logits = stepper.run(np.array([token], np.int64), ring.latest()[:, None])
        token = sample_text(logits, seen, opts.text, rng, opts.greedy)
        if text_finished:
            token = cfg.text_pad_token_id if filled else cfg.enter_token_id
            filled = True
        if think_end is None:
            recent_tokens = (recent_tokens + [token])[-len(cfg.think_end_ids):]
            if tuple(recent_tokens) == cfg.think_end_ids:
                think_end = step + 2
        audio_step = step - think_end if think_end is not None else -1
        for i in range(n_cb):
            sampled[i] = audio_step >= i
            column[i] = (sample_code(audio_logits[i], ring.recent(i, opts.audio.penalty_window), opts.audio, rng,
                                     opts.greedy) if sampled[i] else cfg.audio_pad_code)
        ring.append(column, sampled)
        if record is not None:
            for i in range(n_cb):
                record.audio_codes[i].append(int(column[i]))
        if text_finished and ring.all_stopped():
            return
        seen[token] = True
        frame = ring.frame(audio_step)
        if record is not None and frame is not None:
            record.frames.append(frame.tolist())
        ended = frame is None and audio_step >= n_cb - 1 and bool((ring.stop_step >= 0).any())
        if text_finished:
            yield Step(None, frame, ended)
        else:
            if record is not None:
                record.text_ids.append(token)
            yield Step(token, frame, ended)
            text_finished = token == cfg.eos_token_id
