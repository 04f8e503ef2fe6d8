"""The user's cloned voices: one `<name>.npz` (the bundle's voice format) each, in the user data dir, so they
survive re-exporting or replacing a bundle.

Folder: `$OMNI_ONNX_DATA/voices`, else `$XDG_DATA_HOME/omni-onnx/voices`, else `~/.local/share/omni-onnx/voices`.
A bundle preset with the same name wins over a user voice (`omni-voices add` refuses preset names, so a clash
only happens when the user switches to a bundle with other presets).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .atomic_file import AtomicFile
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


def refuse_existing(name: str, force: bool) -> None:
    """OmniError if the user already has a voice `name` and `force` is not given."""
    path = user_voice_path(name)
    if path.exists() and not force:
        raise OmniError(f"you already have a voice {name!r} ({path}); add --force to replace it, or choose another "
                        f"name")


def save_user_voice(voice: Voice, force: bool = False) -> Path:
    """Write atomically (a temp file renamed into place), so an interrupted add never leaves a broken voice; an
    existing voice of that name is replaced only with `force`."""
    refuse_existing(voice.name, force)
    path = user_voice_path(voice.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OmniError(f"cannot create the voices folder {path.parent}: {e.strerror or e}; set OMNI_ONNX_DATA to a "
                        f"writable folder") from None
    with AtomicFile(path) as f, open(f.tmp, "wb") as file:
        voice.save(file)
    return path


def remove_user_voice(name: str, presets: list[str] = ()) -> Path:
    path = user_voice_path(name)
    if not path.is_file():
        if name in presets:
            raise OmniError(f"{name!r} is a preset of the bundle, not one of your voices; presets cannot be removed "
                            f"(omni-run --voice picks any voice; without it the model's own voice speaks)")
        known = ", ".join(user_voice_names()) or "none"
        raise OmniError(f"no user voice {name!r} in {path.parent} (user voices: {known})")
    path.unlink()
    return path


def voice_listing(presets: list[str], preset_path: Callable[[str], Path] | None = None) -> list[str]:
    """One line per voice `--voice` accepts: the bundle's presets, then the user's voices; a voice whose file cannot
    be read is marked damaged (checking presets needs `preset_path`)."""
    lines = [f"{name}\tpreset" + (_damage(preset_path(name), "re-export the bundle") if preset_path else "")
             for name in presets]
    for name in user_voice_names():
        lines.append(f"{name}\tuser" + ("\t(hidden: a preset has this name)" if name in presets else "")
                     + _damage(user_voice_path(name), "re-add it with --force, or remove it"))
    return lines


def _damage(path: Path, fix: str) -> str:
    try:
        Voice.load(path)
    except OmniError:
        return f"\t(damaged: {fix})"
    return ""
