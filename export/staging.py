"""Bundles and result folders are built in a staging folder beside their destination and moved into place whole,
so an error or Ctrl-C at any point leaves the destination as it was (never half written, never emptied)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from omni_onnx.bundle import MANIFEST


def check_out(out: Path) -> None:
    """`out` may be new, empty or a bundle (replaced only once the new one is complete); raises ValueError."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"--out {out} exists and is not a bundle; choose an empty or new folder")


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder beside `out` (same filesystem, so the final move is a rename)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ValueError(f"cannot write beside --out {out} ({e.strerror}); choose a writable folder") from None


def move_into_place(new: Path, out: Path) -> None:
    """Replace `out` (absent or a folder) by `new`: the old folder is renamed aside first and removed last, so at
    every moment `out` is either the old folder or the new one."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
