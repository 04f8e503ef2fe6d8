"""Outputs appear whole or not at all: each is written to a hidden temporary file in its destination's folder and
renamed over the destination when complete (a rename within one folder is atomic). A failed or interrupted run
leaves an existing file untouched and creates none, and two runs writing the same path each leave a complete file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

from .errors import OmniError


def check_output_path(path: Path, flag: str, suffixes: tuple[str, ...] = ()) -> None:
    """Fail before any work, not after: `path` must be a file name (not a folder) in an existing folder where a file
    can be created, with one of `suffixes` (lower case, e.g. (".wav",)) when given."""
    path = Path(path)
    if path.is_dir():
        raise OmniError(f"{flag} {path} is a folder; give a file name (in it or elsewhere)")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OmniError(f"{flag} {path}: this writes {suffixes[0][1:].upper()} only; name the file "
                        f"{path.with_suffix(suffixes[0]).name} and convert it afterwards if you need another format")
    parent = path.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise OmniError(f"cannot write {flag} {path}: {parent} is a file, not a folder; choose another {flag}")
    if not parent.is_dir():
        raise OmniError(f"cannot write {flag} {path}: folder {parent} does not exist; create it or choose another "
                        f"{flag}")
    try:
        with tempfile.TemporaryFile(dir=parent):  # the real test: permissions, read-only file systems, quotas
            pass
    except OSError as e:
        raise OmniError(f"cannot write {flag} {path}: {e.strerror or e} in {parent}; choose another {flag}") from None


class AtomicFile:
    """A temporary file beside `path` (`.tmp`) that `commit` renames onto `path` and `discard` removes. As a context
    manager it commits when the block ends normally and discards when it raises."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.resolve().parent)
        except OSError as e:
            raise OmniError(f"cannot write {self.path}: {e.strerror or e}; choose another path") from None
        os.close(fd)
        self.tmp = Path(tmp)
        self.done = False

    def commit(self) -> Path:
        """Move the finished file into place, with the permissions a new file (or the one it replaces) would have."""
        if not self.done:
            self.done = True
            try:
                os.chmod(self.tmp, _mode_for(self.path))
                os.replace(self.tmp, self.path)
            except OSError as e:
                self.tmp.unlink(missing_ok=True)
                raise OmniError(f"cannot write {self.path}: {e.strerror or e}; choose another path") from None
        return self.path

    def discard(self) -> None:
        if not self.done:
            self.done = True
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with AtomicFile(path) as f:
        f.tmp.write_bytes(data)
    return Path(path)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
