"""Torch reference of upstream's generation loop (`MiniMindOmni.stream_generate`, spec section 7).

The numpy/onnxruntime loop in `omni_onnx` is checked against this: it drives `OmniTorchModel` with upstream's
protocol (9-row input of 8 Mimi codebooks + text, full prompt at step 0, then one column per step with the KV cache
concatenated the upstream way) and shares no code with the runtime, so agreement between the two means something.
`upstream_check` runs upstream's own code on the same checkpoint and writes the same `CodeDump`, to show in a
session that this restatement is faithful.

Prompts are built with transformers' jinja chat template, as upstream's eval_omni.py does; the runtime builds them
without jinja, so this is also an independent check of its prompt builder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from omni_onnx.config import ModelConfig
from omni_onnx.dump import CodeDump

TOKENIZER_DIR = Path(__file__).parent / "assets" / "minimind-o"

# eval_omni.py, mode 3 (voice clone): the only entry point with a system prompt.
VOICE_SYSTEM_PROMPT = "你是一个专业的语音助手，请用给定的音色风格来回答用户的问题。请尽量详细地回答，给出有价值的信息。"

# Hard-coded in upstream's stream_generate (not configurable there).
AUDIO_TEMPERATURE = 0.2
AUDIO_REPETITION_PENALTY = 1.05
AUDIO_PENALTY_WINDOW = 3
AUDIO_TOP_K = 50

Draw = Callable[[torch.Tensor], int]  # probabilities [N] -> chosen index


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def chat_prompt_ids(
    messages: list[dict], tokenizer_dir: str | Path = TOKENIZER_DIR, open_thinking: bool = False
) -> list[int]:
    """Prompt ids exactly as eval_omni.py builds them: the jinja chat template with the generation prompt, then
    the tokenizer (no bos/eos added)."""
    tok = _tokenizer(str(tokenizer_dir))
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, open_thinking=open_thinking)
    return list(tok(text).data["input_ids"])


def voice_prompt_messages(text: str) -> list[dict]:
    """eval_omni.py's voice-clone conversation: its fixed system prompt, then the user's text."""
    return [{"role": "system", "content": VOICE_SYSTEM_PROMPT}, {"role": "user", "content": text}]


def _argmax(probs: torch.Tensor) -> int:
    return int(probs.argmax())


def _sampler(rng: np.random.Generator) -> Draw:
    def draw(probs: torch.Tensor) -> int:
        p = probs.double().numpy()
        return int(rng.choice(p.size, p=p / p.sum()))

    return draw


def text_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Upstream's text distribution: temperature, then top-p that keeps the token crossing the threshold (rp = 1
    upstream, so no repetition penalty). logits: float [V]."""
    z = logits.clone() / (temperature + 1e-9)
    if top_p and top_p < 1.0:
        sorted_z, order = torch.sort(z, descending=True)
        drop = torch.cumsum(F.softmax(sorted_z, dim=-1), dim=-1) > top_p
        drop = torch.cat([drop.new_zeros(1), drop[:-1]])  # shift right: the crossing token survives
        z[order[drop]] = -float("inf")
    return F.softmax(z, dim=-1)


def audio_scores(logits: torch.Tensor, history: list[int]) -> torch.Tensor:
    """One codebook's scores before top-50: /0.2, then penalty 1.05 for each of the last 3 codes of `history` in
    order (duplicates compound, pads count). logits: float [audio_vocab]."""
    z = logits.clone() / AUDIO_TEMPERATURE
    for prev in history[-AUDIO_PENALTY_WINDOW:]:
        z[prev] = z[prev] / AUDIO_REPETITION_PENALTY if z[prev] > 0 else z[prev] * AUDIO_REPETITION_PENALTY
    return z


def _audio_code(logits: torch.Tensor, history: list[int], draw: Draw) -> int:
    top_val, top_idx = audio_scores(logits, history).topk(AUDIO_TOP_K)
    return int(top_idx[draw(F.softmax(top_val, dim=-1))])


def prompt_audio_rows(cfg: ModelConfig, prompt_len: int, ref_codes: torch.Tensor | None, has_spk: bool) -> torch.Tensor:
    """The 8 audio rows under the prompt, int64 [1, 8, L]: pads, the reference codes right-aligned to end at L-1
    (cut from the left when longer), and the speaker code column just before them when a speaker embedding is used."""
    rows = torch.full((1, cfg.num_codebooks, prompt_len), cfg.audio_pad_code, dtype=torch.long)
    ref_len = 0 if ref_codes is None else ref_codes.shape[-1]
    start = max(1 if has_spk else 0, prompt_len - ref_len)
    if ref_codes is not None and start < prompt_len:
        rows[0, :, start:] = ref_codes[:, ref_len - (prompt_len - start) :]
    if has_spk and start > 0:
        rows[0, :, start - 1] = cfg.audio_spk_code
    return rows


def _as_ref_codes(cfg: ModelConfig, ref_codes: Any) -> torch.Tensor | None:
    if ref_codes is None:
        return None
    ref = torch.as_tensor(np.asarray(ref_codes), dtype=torch.long)
    if ref.dim() != 2 or ref.shape[0] != cfg.num_codebooks:
        raise ValueError(
            f"ref_codes must be int [{cfg.num_codebooks}, frames] (one voice as stored in voices.pt), "
            f"got shape {tuple(ref.shape)}"
        )
    return ref


def _as_spk_emb(cfg: ModelConfig, spk_emb: Any) -> torch.Tensor | None:
    if spk_emb is None:
        return None
    emb = torch.as_tensor(np.asarray(spk_emb, dtype=np.float32))
    if emb.numel() != cfg.spk_emb_size:
        raise ValueError(f"spk_emb must hold {cfg.spk_emb_size} floats, got shape {tuple(emb.shape)}")
    return emb.reshape(1, -1).half().float()  # upstream: spk_emb.half(); our model is fp32


@torch.no_grad()
def reference_generate(
    model: Any,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    greedy: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.85,
    ref_codes: Any = None,
    spk_emb: Any = None,
    open_thinking: bool = False,
    rng: np.random.Generator | None = None,
    prefill_embeds: torch.Tensor | None = None,
) -> CodeDump:
    """Run upstream's streaming generation on an `OmniTorchModel` and record it as a `CodeDump`.

    Args:
        model: `OmniTorchModel` (fp32, eval).
        prompt_ids: the prompt, e.g. from `chat_prompt_ids`.
        max_new_tokens: bounds text tokens plus the audio tail, as upstream.
        greedy: every draw is the argmax of upstream's distribution (text: after temperature and top-p; audio:
            of the penalised top-50). Otherwise draws come from `rng` (numbers will not match torch's RNG).
        ref_codes: int [8, F] reference codes of one voice, or None.
        spk_emb: float [192] speaker embedding, or None. Rounded to fp16 as upstream's eval does
            (`spk_emb.half()`), then back to fp32 for our fp32 model.
        open_thinking: audio starts two steps after the model writes `</think>\\n\\n` instead of at step 1.
        prefill_embeds: [1, L, hidden] Thinker input embeddings for the prompt (token embeddings with speech/image
            features already injected, upstream-style); None for text prompts.

    Returns:
        prompt_ids; text_ids up to and including EOS; audio_codes = upstream's per-codebook lists (pads included,
        including the draws of a final step that stops the loop); frames = every emitted frame.
    """
    if not greedy and rng is None:
        raise ValueError("greedy=False needs rng=numpy.random.default_rng(seed)")
    draw = _argmax if greedy else _sampler(rng)
    cfg: ModelConfig = model.cfg
    n, prompt_len = cfg.num_codebooks, len(prompt_ids)
    spk = _as_spk_emb(cfg, spk_emb)
    x_codes = prompt_audio_rows(cfg, prompt_len, _as_ref_codes(cfg, ref_codes), spk is not None)
    x_text = torch.tensor([prompt_ids], dtype=torch.long)

    dump = CodeDump(prompt_ids=list(prompt_ids))
    codes, stop = dump.audio_codes, [None] * n
    generated: list[int] = []  # every appended text token, post-EOS fill included
    text_finished, fill, think_end = False, cfg.enter_token_id, None
    past_thinker = past_talker = None
    while len(generated) < max_new_tokens:  # upstream: len(ids) < L + max_new_tokens
        if past_thinker is None and prefill_embeds is not None:  # upstream injects features at prefill only
            logits, bridge, past_thinker = model.thinker_forward(x_text, None, prefill_embeds,
                                                                 torch.ones(x_text.shape, dtype=torch.bool))
        else:
            logits, bridge, past_thinker = model.thinker_forward(x_text, past_thinker)
        spk_mask = x_codes[:, 0, :] == cfg.audio_spk_code if spk is not None else None
        audio_logits, past_talker = model.talker_forward(bridge, x_codes, past_talker, spk, spk_mask)

        token = draw(text_probs(logits[0, -1], temperature, top_p))
        if text_finished:  # the sample is still drawn, then replaced: 201 once, 0 afterwards
            token, fill = fill, cfg.text_pad_token_id
        step = len(generated)
        if open_thinking:
            recent = [*generated, token][-len(cfg.think_end_ids) :]
            if think_end is None and recent == list(cfg.think_end_ids):
                think_end = step + 2
            audio_step = step - think_end if think_end is not None else -1
        else:
            audio_step = step - 1
        for i in range(n):
            if audio_step < i:
                codes[i].append(cfg.audio_pad_code)
                continue
            codes[i].append(_audio_code(audio_logits[0, i, -1], codes[i], draw))
            if stop[i] is None and codes[i][-1] >= cfg.codebook_size:
                stop[i] = len(codes[i]) - 1
        if text_finished and all(s is not None for s in stop):
            break

        generated.append(token)
        x_text = torch.tensor([[token]], dtype=torch.long)
        x_codes = torch.tensor([[[c[-1]] for c in codes]], dtype=torch.long)  # post-stop codes are fed back too
        if audio_step >= n - 1:
            pos = [step - (n - 1) + i for i in range(n)]
            if all(stop[i] is None or pos[i] < stop[i] for i in range(n)):
                dump.frames.append([codes[i][pos[i]] for i in range(n)])
        if not text_finished:
            dump.text_ids.append(token)
            text_finished = token == cfg.eos_token_id
    return dump
