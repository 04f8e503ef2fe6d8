"""Quality as the MiniMind-O paper measures it: Thinker–Talker consistency CER.

The model answers each eval question in text and in speech; SenseVoice (the bundle's own speech encoder) transcribes
the speech, and the CER is the character edit distance between the normalised text and the normalised transcript
over the text's length. The paper's table reports the mean over prompts ("Avg CER"); the corpus figure (all edits
over all characters) is given beside it. With random weights both are meaningless, so the report names the weights.
Voice-cloning similarity: the model answers each question in voice-clone mode with a bundle voice (its reference
codes and CAM++ embedding), the bundle's CAM++ graph embeds the speech at 16 kHz, and the figure is the mean cosine
between that and the voice's own embedding; reported as not available when the bundle has no `campplus` graph.
"""

from __future__ import annotations

import csv
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# upstream's eval questions (dataset/eval_omni, Apache-2.0): clip name, language, question text
QUESTIONS = Path(__file__).resolve().parent / "data" / "questions.tsv"
PAPER = {"dense": {"cer": 0.0897, "similarity": 0.5995}, "moe": {"cer": 0.0900, "similarity": 0.5937}}


def normalise(text: str) -> str:
    """NFKC (full-width letters/digits/punctuation -> half-width), lower case, punctuation and symbols dropped (ASCII
    and Unicode P*/S* classes), and all whitespace dropped: CER counts characters, and the ASR transcript's spacing
    (SentencePiece pieces) is not something the speech says."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if not (c.isspace() or c in string.punctuation
                                           or unicodedata.category(c)[0] in "PS"))


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(character edits, reference length) between normalised strings; edits by jiwer (Levenshtein)."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        raise ValueError("the reference is empty after normalisation; CER is undefined for it")
    if not hyp:
        return len(ref), len(ref)
    out = jiwer.process_characters(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref)


def cer(reference: str, hypothesis: str) -> float:
    edits, n = char_errors(reference, hypothesis)
    return edits / n


@dataclass(frozen=True)
class Question:
    file: str
    language: str
    text: str


def eval_questions(path: Path = QUESTIONS) -> list[Question]:
    """The spoken questions of upstream's eval set (questions.tsv: file, language, question text)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return [Question(*r[:3]) for r in rows if len(r) >= 3 and r[0].startswith("audio-")]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (float64 accumulation); a zero vector has no direction, so it is refused."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cosine of vectors of different sizes {a.size} and {b.size}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("cosine is undefined for a zero vector")
    return float(a @ b / (na * nb))


def answer(model, text: str, opts, voice: str | None = None) -> tuple[str, np.ndarray | None]:
    """One greedy turn (`voice`: eval_omni's voice-clone mode): (the reply text, its speech at 16 kHz or None)."""
    from omni_onnx.model import AudioChunk, Conversation, TurnEnd
    from omni_onnx.speech import resample

    pcm, reply = [], ""
    for ev in Conversation(model, voice=voice).respond(text, opts):
        if isinstance(ev, AudioChunk):
            pcm.append(ev.pcm)
        elif isinstance(ev, TurnEnd):
            reply = ev.text
    if not pcm:
        return reply, None
    return reply, resample(np.concatenate(pcm).astype(np.float64), model.sample_rate).astype(np.float32)


def consistency(model, questions: list[Question], max_new_tokens: int, progress=None) -> dict:
    """Answer each question (greedy, text prompt), transcribe the speech at 16 kHz, score text vs transcript.
    Not available (a note, no figures) without a speech encoder and a Mimi decoder."""
    from omni_onnx.generate import GenerationOptions

    if model.speech is None or model.mimi is None:
        return {"cer_mean": None, "cer_corpus": None, "scored": 0, "prompts": len(questions), "paper": PAPER,
                "note": "not available: the bundle needs the speech encoder and the Mimi decoder "
                        "(export with --sensevoice and --mimi)"}
    rows, edits, chars = [], 0, 0
    opts = GenerationOptions(max_new_tokens=max_new_tokens, greedy=True)
    for q in questions:
        reply, wav = answer(model, q.text, opts)
        row = {"question": q.text, "language": q.language, "text": reply, "transcript": None, "cer": None}
        if wav is not None and normalise(reply):
            row["transcript"] = model.speech.transcribe(wav)
            e, n = char_errors(reply, row["transcript"])
            row["cer"], edits, chars = e / n, edits + e, chars + n
        rows.append(row)
        if progress is not None:
            progress()
    scored = [r["cer"] for r in rows if r["cer"] is not None]
    return {"cer_mean": float(np.mean(scored)) if scored else None,
            "cer_corpus": edits / chars if chars else None,
            "scored": len(scored), "prompts": len(rows),
            "paper": PAPER, "max_new_tokens": max_new_tokens, "samples": rows}


def voice_similarity(model, questions: list[Question], voice: str | None, max_new_tokens: int,
                     progress=None) -> dict:
    """The paper's cloning similarity: each question answered in `voice` (default: the bundle's first), the speech
    embedded by the bundle's CAM++ at 16 kHz, cosine with the voice's stored embedding; mean over prompts.
    Returns {"similarity": None, "note": why} when the bundle cannot measure it."""
    from omni_onnx.generate import GenerationOptions

    if not model.bundle.has_graph("campplus"):
        return {"similarity": None, "note": "not available: the bundle has no CAM++ speaker encoder (campplus)"}
    voice = voice or next(iter(model.bundle.voices), None)
    if voice is None:
        return {"similarity": None, "note": "not available: the bundle has no voices to clone"}
    target = model.voice(voice).spk_emb
    opts = GenerationOptions(max_new_tokens=max_new_tokens, greedy=True)
    rows = []
    for q in questions:
        _, wav = answer(model, q.text, opts, voice)
        rows.append({"question": q.text, "similarity": None if wav is None else
                     cosine(target, model.speaker.embed(wav))})
        if progress is not None:
            progress()
    scored = [r["similarity"] for r in rows if r["similarity"] is not None]
    return {"similarity": float(np.mean(scored)) if scored else None, "voice": voice, "scored": len(scored),
            "prompts": len(rows), "samples": rows}
