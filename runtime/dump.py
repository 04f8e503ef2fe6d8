"""`--dump-codes` JSON: a public, stable record of one generated answer (prompt, text ids, audio codes, frames).

Format (keys and meaning are an interface; keep them stable):
  prompt_ids   list[int]              the prompt's token ids
  text_ids     list[int]              generated text tokens up to and including EOS (all of them if no EOS)
  audio_codes  list[list[int]] (8)    each codebook exactly as the delayed stream emits it, pads included
  frames       list[list[int]]        each 8-code frame handed to the Mimi decoder, before zeroing codes >= 2049
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic_file import write_bytes_atomic


@dataclass
class CodeDump:
    prompt_ids: list[int]
    text_ids: list[int] = field(default_factory=list)
    audio_codes: list[list[int]] = field(default_factory=lambda: [[] for _ in range(8)])
    frames: list[list[int]] = field(default_factory=list)

    def write(self, path: Path) -> None:
        write_bytes_atomic(Path(path), (json.dumps(asdict(self)) + "\n").encode("utf-8"))

    @classmethod
    def read(cls, path: Path) -> CodeDump:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(d["prompt_ids"], d["text_ids"], d["audio_codes"], d["frames"])
