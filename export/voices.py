"""Speaker presets: read upstream's `voices.pt` files and write the bundle's `voices/<name>.npz`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from omni_onnx.voices import Voice

ASSETS = Path(__file__).parent / "assets" / "minimind-o"
RELEASED_VOICE_FILES = (ASSETS / "voices.pt", ASSETS / "voices_unseen.pt")


def read_voices_pt(path: Path) -> list[Voice]:
    """`{name: {"ref_codes": int [8, F], "spk_emb": float [192]}}` as upstream saves it (torch pickle)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read voices file {path}: {e}") from None
    voices = []
    for name, entry in sorted(data.items()):
        if not isinstance(entry, dict) or "ref_codes" not in entry or "spk_emb" not in entry:
            raise ValueError(f"{path}: voice {name!r} lacks ref_codes/spk_emb; not a MiniMind-O voices file")
        ref = entry["ref_codes"].to(torch.int64).numpy()
        emb = entry["spk_emb"].to(torch.float32).numpy()
        if ref.ndim != 2 or ref.shape[0] != 8 or emb.shape != (192,) or ref.min() < 0 or ref.max() >= 2048:
            raise ValueError(f"{path}: voice {name!r} has ref_codes {ref.shape} / spk_emb {emb.shape}; "
                             f"expected codes 0..2047 of shape (8, frames) and a (192,) embedding")
        voices.append(Voice(name, np.ascontiguousarray(ref), emb))
    return voices


def write_voices(files: list[Path], out_dir: Path) -> list[str]:
    """Convert every voice in `files` into out_dir/<name>.npz; later files may not redefine a name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for f in files:
        for v in read_voices_pt(f):
            if v.name in names:
                raise ValueError(f"voice {v.name!r} from {f} is already defined by an earlier voices file")
            v.save(out_dir / f"{v.name}.npz")
            names.append(v.name)
    return names
