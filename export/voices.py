"""Speaker presets: read upstream's `voices.pt` files (or folders of `.npz`) and write the bundle's
`voices/<name>.npz`.

The released presets (upstream's `model/speaker/voices.pt` and `voices_unseen.pt`) ship in `assets/minimind-o/voices/`
already converted by `read_voices_pt`, so the package carries no pickles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omni_onnx.voices import Voice

ASSETS = Path(__file__).parent / "assets" / "minimind-o"
RELEASED_VOICES = ASSETS / "voices"


def read_voices_pt(path: Path) -> list[Voice]:
    """`{name: {"ref_codes": int [8, F], "spk_emb": float [192]}}` as upstream saves it (torch pickle)."""
    import torch

    from .checkpoint import torch_load
    data = torch_load(path, "voices file", "pass upstream's voices.pt or a folder of .npz voices")
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not {{name: voice}}; not a MiniMind-O voices file")
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


def read_voices(source: Path) -> list[Voice]:
    """A `voices.pt` file, or a folder of `<name>.npz` voices."""
    if source.is_dir():
        return [Voice.load(p) for p in sorted(source.glob("*.npz"))]
    return read_voices_pt(source)


def write_voices(sources: list[Path], out_dir: Path) -> list[str]:
    """Write every voice in `sources` into out_dir/<name>.npz; later sources may not redefine a name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for f in sources:
        for v in read_voices(f):
            if v.name in names:
                raise ValueError(f"voice {v.name!r} from {f} is already defined by an earlier voices file")
            v.save(out_dir / f"{v.name}.npz")
            names.append(v.name)
    return names
