"""Developer tool: run the REAL upstream MiniMind-O generation on a checkpoint and write a `CodeDump` JSON.

    python -m omni_onnx.export.upstream_check --upstream-src DIR --checkpoint X.pth \\
        --text "Why is the sky blue?" --max-new-tokens 64 [--voice-file voices.pt --voice NAME] --out upstream.json

DIR is a work tree of github.com/jingyaogong/minimind-o (from a bare mirror:
`git -C MIRROR archive HEAD | tar -x -C DIR`). Its files are only imported, never changed. Upstream's
`generate(..., stream=True, return_audio_codes=True)` runs with `torch.multinomial` replaced by argmax (restored
afterwards), in fp32, so the dump must equal `reference.reference_generate(..., greedy=True)` on the same
checkpoint: this is how a session shows that our torch reference (and through it the runtime) is faithful to
upstream. Not used in CI, which has no upstream checkout.

Faithfulness notes:
- Built as eval_omni.py does: `MiniMindOmni(OmniConfig(...))` (encoder folders absent, so no encoders), checkpoint
  loaded with `load_state_dict(..., strict=False)`; unlike eval_omni, missing or unused keys are an error here.
- fp32 instead of eval_omni's `model.half()`; the voice's `spk_emb.half()` is kept, then cast back to fp32.
- Modules upstream imports but this path never calls (librosa) are stubbed in `sys.modules` when not installed.
- Upstream builds its Talker blocks from `MiniMindConfig(hidden_size=...)` defaults and rank-256 adapters. For a
  checkpoint whose Talker dims differ (the tiny test config), those construction-time dims are overridden while the
  model is built; no behaviour is changed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from omni_onnx.config import ModelConfig, upstream_intermediate_size
from omni_onnx.dump import CodeDump
from omni_onnx.export.checkpoint import load_checkpoint
from omni_onnx.export.reference import voice_prompt_messages

UNUSED_IMPORTS = ("librosa",)


def _stub_unused_imports() -> None:
    for name in UNUSED_IMPORTS:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)  # transformers probes find_spec()
            sys.modules[name] = stub


def import_upstream(src: Path) -> types.ModuleType:
    """Upstream's `model.model_omni` module, imported from the checkout at `src`."""
    if not (src / "model" / "model_omni.py").is_file():
        raise FileNotFoundError(f"{src}/model/model_omni.py not found: --upstream-src must be a minimind-o work tree")
    _stub_unused_imports()
    sys.path.insert(0, str(src))
    try:
        return importlib.import_module("model.model_omni")
    finally:
        sys.path.remove(str(src))


def _omni_config(mo: types.ModuleType, cfg: ModelConfig) -> Any:
    return mo.OmniConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        use_moe=cfg.use_moe,
        num_experts=cfg.num_experts,
        num_talker_hidden_layers=cfg.num_talker_hidden_layers,
        talker_hidden_size=cfg.talker_hidden_size,
        audio_hidden_size=cfg.audio_hidden_size,
        image_hidden_size=cfg.image_hidden_size,
        audio_vocab_size=cfg.audio_vocab_size,
        spk_emb_size=cfg.spk_emb_size,
    )


@contextlib.contextmanager
def _talker_dims(mo: types.ModuleType, cfg: ModelConfig) -> Iterator[None]:
    """While building, give upstream's Talker our config's dims where its hard-coded defaults differ."""
    h = cfg.talker_hidden_size
    upstream_dims = (8, 4, h // 8, upstream_intermediate_size(h), 256)
    ours = (
        cfg.talker_num_attention_heads,
        cfg.talker_num_key_value_heads,
        cfg.talker_head_dim,
        cfg.talker_intermediate_size,
        cfg.adapter_rank,
    )
    if ours == upstream_dims:
        yield
        return
    saved = {k: getattr(mo, k) for k in ("MiniMindConfig", "TalkerHead", "TalkerEmbedding")}
    heads, kv_heads, head_dim, inter, rank = ours
    mo.MiniMindConfig = functools.partial(
        saved["MiniMindConfig"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
    )
    mo.TalkerHead = functools.partial(saved["TalkerHead"], rank=rank)
    mo.TalkerEmbedding = functools.partial(saved["TalkerEmbedding"], rank=rank)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(mo, k, v)


def build_upstream_model(mo: types.ModuleType, cfg: ModelConfig, checkpoint: Path) -> Any:
    """Upstream `MiniMindOmni` with the checkpoint loaded as eval_omni does, fp32, eval. Raises on missing keys."""
    with _talker_dims(mo, cfg), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\[MiniMindOmni\] .* not found")  # no encoders, on purpose
        model = mo.MiniMindOmni(
            _omni_config(mo, cfg), audio_encoder_path="/nonexistent", vision_model_path="/nonexistent"
        )
    state = torch.load(checkpoint, map_location="cpu")
    result = model.load_state_dict(state, strict=False)
    for what, keys in (("lacks", result.missing_keys), ("has unused", result.unexpected_keys)):
        if keys:
            raise ValueError(
                f"{checkpoint} {what} {len(keys)} keys for upstream's MiniMindOmni (strict=False would hide this), "
                f"e.g. {keys[:5]}; pass a complete sft_omni_*.pth"
            )
    return model.float().eval()


@contextlib.contextmanager
def argmax_multinomial() -> Iterator[None]:
    """Replace `torch.multinomial(probs, 1)` by the argmax of `probs` (greedy), restoring it afterwards."""
    original = torch.multinomial

    def argmax(probs: torch.Tensor, num_samples: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        if num_samples != 1:
            raise NotImplementedError(f"argmax stands in for one sample only, got num_samples={num_samples}")
        return probs.argmax(dim=-1, keepdim=True)

    torch.multinomial = argmax
    try:
        yield
    finally:
        torch.multinomial = original


def upstream_prompt_ids(src: Path, messages: list[dict], open_thinking: bool) -> list[int]:
    """eval_omni.py's prompt: upstream's own tokenizer folder, jinja template, then tokenize."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src / "model"))
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, open_thinking=open_thinking)
    return list(tok(text).data["input_ids"])


def load_voice(voice_file: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref_codes [1, 8, F], spk_emb [1, 192]) as eval_omni.py prepares them, spk_emb cast back to fp32."""
    voices = torch.load(voice_file, map_location="cpu")
    if name not in voices:
        raise KeyError(f"voice {name!r} not in {voice_file}; it has {sorted(voices)}")
    v = voices[name]
    return v["ref_codes"].unsqueeze(0), v["spk_emb"].half().unsqueeze(0).float()


def run_upstream(
    model: Any,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.7,
    top_p: float = 0.85,
    ref_codes: torch.Tensor | None = None,
    spk_emb: torch.Tensor | None = None,
    open_thinking: bool = False,
) -> CodeDump:
    """Greedy upstream `generate(stream=True)`; its internal `audio_codes` lists are read from the generator's frame
    (they are live lists, so after the last step they hold every draw, pads and the stopping step's included)."""
    dump = CodeDump(prompt_ids=list(prompt_ids))
    x = torch.tensor([prompt_ids], dtype=torch.long)
    with argmax_multinomial(), torch.no_grad():
        gen = model.generate(
            x, eos_token_id=2, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stream=True,
            return_audio_codes=True, open_thinking=open_thinking, audio_inputs=None, audio_lens=None,
            pixel_values=None, ref_codes=ref_codes, spk_emb=spk_emb,
        )  # fmt: skip
        for y, frame in gen:
            dump.audio_codes = gen.gi_frame.f_locals["audio_codes"]
            if y is not None:
                dump.text_ids = y[0].tolist()
            if frame is not None:
                dump.frames.append(list(frame))
    dump.audio_codes = [list(c) for c in dump.audio_codes]
    return dump


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--upstream-src", type=Path, required=True, help="minimind-o work tree")
    p.add_argument("--checkpoint", type=Path, required=True, help="native .pth checkpoint")
    p.add_argument("--text", required=True, help="user message")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--voice-file", type=Path, help="voices.pt; with --voice, uses eval_omni's voice-clone prompt")
    p.add_argument("--voice", help="speaker name in --voice-file")
    p.add_argument("--open-thinking", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="dump JSON to write")
    args = p.parse_args(argv)
    if (args.voice_file is None) != (args.voice is None):
        p.error("--voice-file and --voice go together")

    cfg, _ = load_checkpoint(args.checkpoint)  # dims only; upstream reads the file itself
    mo = import_upstream(args.upstream_src)
    model = build_upstream_model(mo, cfg, args.checkpoint)
    ref_codes = spk_emb = None
    messages = [{"role": "user", "content": args.text}]
    if args.voice:
        ref_codes, spk_emb = load_voice(args.voice_file, args.voice)
        messages = voice_prompt_messages(args.text)
    prompt = upstream_prompt_ids(args.upstream_src, messages, args.open_thinking)
    dump = run_upstream(
        model, prompt, args.max_new_tokens, ref_codes=ref_codes, spk_emb=spk_emb, open_thinking=args.open_thinking
    )
    dump.write(args.out)
    print(f"{args.out}: {len(dump.text_ids)} text tokens, {len(dump.frames)} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
