"""The user's cloned voices: one `<name>.npz` (the bundle's voice format) each, in the user data dir, so they
survive re-exporting or replacing a bundle.

Folder: `$OMNI_ONNX_DATA/voices`, else `$XDG_DATA_HOME/omni-onnx/voices`, else `~/.local/share/omni-onnx/voices`.
A bundle preset with the same name wins over a user voice (`omni-voices add` refuses preset names, so a clash
only happens when the user switches to a bundle with other presets).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OmniError
from .voices import Voice


def user_voice_dir() -> Path:
    if os.environ.get("OMNI_ONNX_DATA"):
        return Path(os.environ["OMNI_ONNX_DATA"]) / "voices"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "omni-onnx" / "voices"


def user_voice_names() -> list[str]:
    folder = user_voice_dir()
    return sorted(p.stem for p in folder.glob("*.npz") if not p.name.startswith(".")) if folder.is_dir() else []


def user_voice_path(name: str) -> Path:
    return user_voice_dir() / f"{name}.npz"


def save_user_voice(voice: Voice) -> Path:
    """Write atomically (a temp file renamed into place), so an interrupted add never leaves a broken voice."""
    path = user_voice_path(voice.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{voice.name}.tmp.npz")
    voice.save(tmp)
    os.replace(tmp, path)
    return path


def remove_user_voice(name: str) -> Path:
    path = user_voice_path(name)
    if not path.is_file():
        known = ", ".join(user_voice_names()) or "none"
        raise OmniError(f"no user voice {name!r} in {path.parent} (user voices: {known})")
    path.unlink()
    return path


def voice_listing(presets: list[str]) -> list[str]:
    """One line per voice `--voice` accepts: the bundle's presets, then the user's voices."""
    lines = [f"{name}\tpreset" for name in presets]
    for name in user_voice_names():
        lines.append(f"{name}\tuser" + ("\t(hidden: a preset has this name)" if name in presets else ""))
    return lines
