"""Fetch the released weights: the upstream checkpoint and kyutai's Mimi, from the Hugging Face hub or a mirror.

A mirror is a local folder laid out as <mirror>/<owner>/<name>/<files> (what `huggingface-cli download --local-dir`
writes); it is also how the download code is tested offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_REPO = "jingyaogong/minimind-3o-pytorch"
MIMI_REPO = "kyutai/mimi"
MIMI_FILES = ("config.json", "model.safetensors")
SENSEVOICE_REPO = "FunAudioLLM/SenseVoiceSmall"
SENSEVOICE_FILES = ("config.yaml", "model.pt", "am.mvn", "chn_jpn_yue_eng_ko_spectok.bpe.model")
# Upstream fetches its vision folder `siglip2-base-p32-256-ve` from ModelScope (gongjy/...); on the Hugging Face hub
# the same tower ships inside Google's fixed-resolution SigLIP2 checkpoint, which SiglipVisionModel loads directly.
SIGLIP_REPO = "google/siglip2-base-patch32-256"
SIGLIP_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


@dataclass(frozen=True)
class HubSource:
    mirror: Path | None = None  # None: the Hugging Face hub (huggingface_hub's cache and progress bars)

    def fetch(self, repo_id: str, files: tuple[str, ...]) -> Path:
        """Make `files` of `repo_id` available in a local folder and return that folder."""
        if self.mirror is not None:
            folder = self.mirror / repo_id
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise ValueError(f"mirror {self.mirror} lacks {', '.join(missing)} of {repo_id} "
                                 f"(expected under {folder})")
            return folder
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        try:
            return Path(snapshot_download(repo_id, allow_patterns=list(files)))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot download {repo_id} from the Hugging Face hub ({reason[:160]}). Offline? "
                             f"Download it on a connected machine and pass --checkpoint/--mimi, or point "
                             f"--hub-mirror at a local copy") from None


def checkpoint_file(moe: bool) -> str:
    return "sft_omni_768_moe.pth" if moe else "sft_omni_768.pth"


@dataclass(frozen=True)
class Release:
    checkpoint: Path
    mimi: Path
    siglip: Path
    sensevoice: Path


def fetch_release(source: HubSource, moe: bool) -> Release:
    """Every folder the released model needs; hub downloads stay in huggingface_hub's cache."""
    ckpt = checkpoint_file(moe)
    return Release(source.fetch(CHECKPOINT_REPO, (ckpt,)) / ckpt, source.fetch(MIMI_REPO, MIMI_FILES),
                   source.fetch(SIGLIP_REPO, SIGLIP_FILES), source.fetch(SENSEVOICE_REPO, SENSEVOICE_FILES))
