"""Random-weight SenseVoiceSmall folders in the released funasr layout, for tests and benchmarks without a download.

Files, as in FunAudioLLM/SenseVoiceSmall: `config.yaml`, `configuration.json` (funasr's file map), `am.mvn`
(Kaldi nnet1 AddShift/Rescale), `model.pt` (a plain fp32 state dict with funasr's key names) and
`chn_jpn_yue_eng_ko_spectok.bpe.model` (a SentencePiece BPE model; made-up pieces, the first three are the usual
`<unk>` (the CTC blank), `<s>`, `</s>`, and a few `<|tag|>` pieces sit at the end). "full" has the released
sizes (70 SANM layers, 25055 classes); "tiny" keeps the structure (560-d input, FSMN kernel 11, encoders0 +
encoders + tp_encoders) with 32-d layers to match the tiny ModelConfig's audio_hidden_size.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from .sensevoice import SenseVoiceConfig, SenseVoiceSmall

SIZES = ("tiny", "full")
BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"
TAGS = ("<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|NEUTRAL|>", "<|Speech|>", "<|woitn|>")


def random_sensevoice_config(size: str) -> SenseVoiceConfig:
    if size == "full":
        return SenseVoiceConfig()
    if size == "tiny":
        return replace(SenseVoiceConfig(), output_size=32, linear_units=64, num_blocks=2, tp_blocks=1,
                       vocab_size=64)
    raise ValueError(f"unknown SenseVoice size {size!r}; use one of {SIZES}")


def _config_yaml(cfg: SenseVoiceConfig) -> dict:
    """The released config.yaml's model, encoder, tokenizer and front-end sections (training sections left out)."""
    return {
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": {
            "output_size": cfg.output_size, "attention_heads": cfg.attention_heads,
            "linear_units": cfg.linear_units, "num_blocks": cfg.num_blocks, "tp_blocks": cfg.tp_blocks,
            "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
            "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
            "kernel_size": cfg.kernel_size, "sanm_shfit": cfg.sanm_shfit, "selfattention_layer_type": "sanm",
        },
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                          "lfr_m": 7, "lfr_n": 6, "cmvn_file": None},
    }


CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"bpemodel": BPE_MODEL},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}


def _am_mvn(dim: int, rng: np.random.Generator) -> str:
    """Log-mel-like statistics: the same 80 shifts/scales repeated for each of the 7 stacked frames."""
    mels = dim // 7
    shift = np.tile(-rng.uniform(8.0, 16.0, mels), 7)
    scale = np.tile(rng.uniform(0.15, 0.35, mels), 7)

    def row(v: np.ndarray) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{x:.6f}" for x in v) + " ]"

    return "\n".join(["<Nnet>", f"<Splice> {dim} {dim}", "[ 0 ]", f"<AddShift> {dim} {dim}", row(shift),
                      f"<Rescale> {dim} {dim}", row(scale), "</Nnet>", ""])


def _pieces(vocab_size: int) -> list[str]:
    """Unique made-up pieces: specials, then word-initial ('\u2581'-prefixed) and inner letter strings, then tags."""
    def word(i: int) -> str:
        s = ""
        while True:
            s = chr(ord("a") + i % 26) + s
            i = i // 26 - 1
            if i < 0:
                return s

    body = vocab_size - 3 - len(TAGS)
    return ["<unk>", "<s>", "</s>", *(("\u2581" if i % 2 == 0 else "") + word(i // 2) for i in range(body)), *TAGS]


def _bpe_model(vocab_size: int) -> bytes:
    from transformers.utils import sentencepiece_model_pb2_new as spm_pb2

    proto = spm_pb2.ModelProto()
    types = {"<unk>": 2, "<s>": 3, "</s>": 3}  # UNKNOWN, CONTROL; tags are USER_DEFINED (4), the rest NORMAL (1)
    for i, piece in enumerate(_pieces(vocab_size)):
        proto.pieces.add(piece=piece, score=0.0 if i < 3 else -float(i),
                         type=types.get(piece, 4 if piece in TAGS else 1))
    proto.trainer_spec.model_type = 2  # BPE
    proto.trainer_spec.vocab_size = vocab_size
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    return proto.SerializeToString()


@torch.no_grad()
def _randomize(model: SenseVoiceSmall, gen: torch.Generator) -> None:
    """Default inits give LayerNorms of exactly 1/0; perturb them so a mix-up of norms would show."""
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def write_random_sensevoice(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a deterministic random-weight SenseVoiceSmall folder and return it."""
    cfg = random_sensevoice_config(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SenseVoiceSmall(cfg)
    _randomize(model, torch.Generator().manual_seed(seed))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(_config_yaml(cfg), sort_keys=False), encoding="utf-8")
    (out / "configuration.json").write_text(json.dumps(CONFIGURATION_JSON, indent=2) + "\n", encoding="utf-8")
    (out / "am.mvn").write_text(_am_mvn(cfg.input_size, np.random.default_rng(seed)), encoding="utf-8")
    (out / BPE_MODEL).write_bytes(_bpe_model(cfg.vocab_size))
    return out
