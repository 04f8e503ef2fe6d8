"""The input folders' and files' layouts, checked before any work: these checks import nothing heavy (loading
transformers alone takes ~20 s on a busy 2-core machine), so a wrong path is reported at once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni_onnx.image import PREPROCESSOR_FILE

SIGLIP_FIX = "pass upstream's SigLIP2 vision folder (siglip2-base-p32-256-ve)"


def _absent(path: Path) -> str:
    """Why a path that should be a folder (or a file) is not: it is the other kind, or it is missing."""
    return "is a file" if path.is_file() else "is a folder" if path.is_dir() else "does not exist"


def check_mimi_folder(folder: str | Path) -> Path:
    """The folder's layout (config.json + weights), checked before any work; raises ValueError naming the fix."""
    folder = Path(folder)
    fix = "pass the Hugging Face kyutai/mimi folder (upstream's model/mimi)"
    if not folder.is_dir():
        raise ValueError(f"Mimi folder {folder} {_absent(folder)}; {fix}")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder / 'config.json'} is missing; {fix}, which holds config.json beside the weights")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise ValueError(f"{folder / 'model.safetensors'} is missing; {fix}, weights included")
    return folder


def check_siglip_folder(folder: str | Path) -> Path:
    """The folder's layout (config.json + preprocessor_config.json), checked before any work."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"SigLIP folder {folder} {_absent(folder)}; {SIGLIP_FIX}")
    for name in ("config.json", PREPROCESSOR_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder / name} is missing; {SIGLIP_FIX}")
    return folder


def check_campplus_file(path: str | Path) -> Path:
    """That the checkpoint is a file, checked before any work."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CAM++ checkpoint {path} {_absent(path)}; pass "
                         f"upstream's model/campplus/campplus_cn_common.pt (ModelScope gongjy/campplus)")
    return path


@dataclass(frozen=True)
class SenseVoiceFolder:
    """What a funasr SenseVoiceSmall folder holds besides the weights, resolved to paths."""

    root: Path
    config: dict[str, Any]
    weights: Path
    cmvn: Path
    tokenizer: Path


def _file_metas(root: Path) -> dict[str, Any]:
    path = root / "configuration.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("file_path_metas", {}) or {}
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from FunAudioLLM/SenseVoiceSmall") from None


def resolve_folder(folder: str | Path) -> SenseVoiceFolder:
    """Find config.yaml, model.pt, am.mvn and the BPE model the way funasr does (configuration.json's
    file_path_metas first, then the released names)."""
    import yaml

    root = Path(folder)
    fix = "pass the FunAudioLLM/SenseVoiceSmall folder (upstream's model/SenseVoiceSmall)"
    if not root.is_dir():
        raise ValueError(f"SenseVoice folder {root} {_absent(root)}; {fix}")
    metas = _file_metas(root)
    bpe = (metas.get("tokenizer_conf") or {}).get("bpemodel")
    cmvn = (metas.get("frontend_conf") or {}).get("cmvn_file", "am.mvn")
    candidates = sorted(root.glob("*.bpe.model")) if not bpe else [root / bpe]
    paths = {"config.yaml": root / metas.get("config", "config.yaml"),
             "model.pt": root / metas.get("init_param", "model.pt"),
             "am.mvn": root / cmvn,
             "the tokenizer (*.bpe.model)": candidates[0] if candidates else root / "?.bpe.model"}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise ValueError(f"{root} lacks {', '.join(missing)}; {fix}, with every file of the release")
    config = yaml.safe_load(paths["config.yaml"].read_text(encoding="utf-8")) or {}
    return SenseVoiceFolder(root, config, paths["model.pt"], paths["am.mvn"], paths["the tokenizer (*.bpe.model)"])
