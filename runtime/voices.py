"""Speaker presets: reference codes + CAM++ speaker embedding, stored in the bundle as voices/<name>.npz."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import OmniError


@dataclass(frozen=True)
class Voice:
    name: str
    ref_codes: np.ndarray  # int64 [8, frames], Mimi codes 0..2047
    spk_emb: np.ndarray  # float32 [192], raw CAM++ vector

    @classmethod
    def load(cls, path: Path) -> Voice:
        try:
            with np.load(path, allow_pickle=False) as z:
                ref, emb = z["ref_codes"].astype(np.int64), z["spk_emb"].astype(np.float32)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, TypeError):
            # truncated or junk files surface as any of these (a short junk file even as "pickled data")
            raise OmniError(f"voice file {path} is damaged (not a readable voice .npz); re-add the voice with "
                            f"omni-voices add --force, remove it with omni-voices remove, or re-export the bundle"
                            ) from None
        if ref.ndim != 2 or ref.shape[0] != 8 or emb.shape != (192,):
            raise OmniError(f"voice file {path} has ref_codes {ref.shape} / spk_emb {emb.shape}; "
                            f"expected (8, frames) / (192,)")
        return cls(Path(path).stem, ref, emb)

    def save(self, file: Path | BinaryIO) -> None:
        np.savez(file, ref_codes=self.ref_codes.astype(np.int64), spk_emb=self.spk_emb.astype(np.float32))

    def talker_spk_emb(self) -> np.ndarray:
        """float32 [1, 192]: upstream feeds the embedding as fp16 (`spk_emb.half()`), so round it the same way."""
        return self.spk_emb.astype(np.float16).astype(np.float32)[None]
