"""A bundle is a folder: graphs + manifest.json + tokenizer + voices. This module reads and verifies one.

manifest.json keys: format_version, package_version, config (ModelConfig), mimi (MimiDims or null),
vision ({image_size} or null), speech ({vocab_size, output_size, feature_dim} or null),
static ({context, prefill_chunk}: fixed-shape Thinker/Talker graphs, see contracts.StaticShape; absent or null),
graphs {name: {file, sha256, contract}}, files {relative path: sha256} (tokenizer, voices), voices [names],
source {what the bundle was exported from}, generation (default options), random_weights (true in a demo bundle;
absent or false otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from . import BUNDLE_FORMAT_VERSION
from .config import ModelConfig
from .contracts import (GraphSpec, MimiDims, StaticShape, audio_projector_spec, campplus_spec, mimi_decoder_spec,
                        mimi_encoder_spec, sensevoice_spec, silero_vad_spec, talker_spec, thinker_spec, vision_spec)
from .errors import BundleError

MANIFEST = "manifest.json"
VERIFIED_STAMP = ".verified.json"  # (sha256, size, mtime) of each file at its last full check
EXPORT_HINT = "omni-export --checkpoint <sft_omni_768.pth> --mimi <mimi folder> --out <bundle>"


def default_bundle_dir() -> Path:
    """Where omni-export writes and omni-run looks when no --bundle is given: the user cache dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "omni-onnx" / "bundle"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def expected_specs(cfg: ModelConfig, manifest: dict[str, Any]) -> dict[str, GraphSpec]:
    """The contracts this version of the code drives, for a bundle with this config and optional sections."""
    specs = {"thinker": thinker_spec(cfg), "talker": talker_spec(cfg)}
    if manifest.get("static") is not None:  # fixed-shape Thinker/Talker (omni-export --static)
        specs = StaticShape.from_dict(manifest["static"]).specs(cfg)
    if manifest.get("mimi") is not None:
        specs["mimi_decoder"] = mimi_decoder_spec(MimiDims.from_dict(manifest["mimi"]),
                                                  None if manifest.get("static") is None else 1)
    if manifest.get("vision") is not None:
        specs["vision"] = vision_spec(cfg, int(manifest["vision"]["image_size"]))
    if manifest.get("speech") is not None:
        sp = manifest["speech"]
        specs["sensevoice"] = sensevoice_spec(int(sp["vocab_size"]), int(sp["output_size"]), int(sp["feature_dim"]))
        specs["audio_projector"] = audio_projector_spec(cfg)
    graphs = manifest.get("graphs", {})
    if "mimi_encoder" in graphs:  # voice cloning; fixed I/O (the released Mimi and CAM++), so no manifest section
        specs["mimi_encoder"] = mimi_encoder_spec()
    if "campplus" in graphs:
        specs["campplus"] = campplus_spec()
    if "vad" in graphs:  # Silero VAD for --mic
        specs["vad"] = silero_vad_spec()
    return specs


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]
    config: ModelConfig
    specs: dict[str, GraphSpec]
    # relative path -> [sha256, size, mtime_ns] of each file as `open` verified it; empty when it did not
    verified: dict[str, list] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(cls, root: Path, verify_checksums: bool = True) -> Bundle:
        root = Path(root)
        if not root.is_dir():
            raise BundleError(f"no bundle at {root}: create one with `{EXPORT_HINT}` "
                              f"(or `omni-export --demo --out {root}` for an offline demo), or pass --bundle DIR")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing; re-export it with `{EXPORT_HINT}`")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"{mpath} is unreadable ({e}); re-export the bundle") from None
        version = manifest.get("format_version")
        if version != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"bundle {root} has format version {version} (package {manifest.get('package_version', '?')}), "
                f"but this omni-onnx reads format {BUNDLE_FORMAT_VERSION}: re-export it with this version "
                f"(`{EXPORT_HINT}`)")
        try:
            config = ModelConfig.from_dict(manifest["config"])
            specs = expected_specs(config, manifest)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"bundle {root} has an invalid manifest ({e}); re-export it") from None
        bundle = cls(root, manifest, config, specs)
        bundle._check_graph_entries()
        bundle._check_onnxruntime()
        if verify_checksums:
            bundle._check_files()
        return bundle

    def _check_graph_entries(self) -> None:
        graphs = self.manifest.get("graphs", {})
        for name, spec in self.specs.items():
            entry = graphs.get(name)
            if entry is None:
                raise BundleError(f"bundle {self.root} lacks the {name} graph in its manifest; re-export it")
            if GraphSpec.from_dict(entry["contract"]) != spec:
                raise BundleError(f"the {name} graph in {self.root} was exported with another contract "
                                  f"(version {entry['contract'].get('version')}, this code needs {spec.version}); "
                                  f"re-export the bundle with this omni-onnx")

    def _check_onnxruntime(self) -> None:
        """A quantized bundle may name the oldest onnxruntime that loads its graphs (omni-quant writes it for int4:
        older versions reject its MatMulNBits nodes as an invalid model, which would read as a corrupt file)."""
        need = (self.manifest.get("quantization") or {}).get("min_onnxruntime")
        if need and _minor_version(ort.__version__) < _minor_version(need):
            recipe = self.manifest["quantization"].get("recipe")
            raise BundleError(f"bundle {self.root} ({recipe}) needs onnxruntime>={need}, but {ort.__version__} is "
                              f"installed: `pip install -U 'onnxruntime>={need}'`, or use an int8 bundle")

    def _check_files(self) -> None:
        """sha256 of every listed file, skipping files whose (size, mtime) match the stamp of an earlier full check:
        hashing a 2 GB fp32 bundle takes seconds, and a truncated or edited file changes size or mtime."""
        listed = {e["file"]: e["sha256"] for e in self.manifest["graphs"].values()}
        listed.update(self.manifest.get("files", {}))
        stamp_path = self.root / VERIFIED_STAMP
        try:
            stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = {}
        seen = {rel: self._check_file(rel, digest, stamp.get(rel)) for rel, digest in listed.items()}
        self.verified.update(seen)
        if seen != stamp:
            try:
                stamp_path.write_text(json.dumps(seen), encoding="utf-8")
            except OSError:  # a read-only bundle is verified in full at every load
                pass

    def _check_file(self, rel: str, digest: str, known: list | None) -> list:
        """[sha256, size, mtime_ns] of `rel`, hashed unless its size and mtime are those of `known` (an earlier
        check); BundleError when it is missing or its content is not the manifest's."""
        path = self.root / rel
        if not path.is_file():
            raise BundleError(f"bundle {self.root} is missing {rel}; re-export it")
        st = path.stat()
        seen = [digest, st.st_size, st.st_mtime_ns]
        if seen != known and sha256_file(path) != digest:
            raise BundleError(f"{path} does not match its checksum in {MANIFEST} (corrupted, truncated or "
                              f"edited); re-export the bundle")
        return seen

    @property
    def static(self) -> StaticShape | None:
        """The fixed sizes of a static bundle's Thinker/Talker graphs; None for a dynamic bundle."""
        section = self.manifest.get("static")
        return None if section is None else StaticShape.from_dict(section)

    @property
    def random_weights(self) -> bool:
        """A demo bundle (`omni-export --demo`): random weights in the released formats, so its answers are noise."""
        return bool(self.manifest.get("random_weights", False))

    def has_graph(self, name: str) -> bool:
        return name in self.specs

    def graph_path(self, name: str) -> Path:
        """The graph's file. When `open` verified the bundle, a file that changed since (size or mtime) is hashed
        again, so a graph opened later (loaded on first use) is checked as if it had been opened at once."""
        rel = self.manifest["graphs"][name]["file"]
        if rel in self.verified:
            self.verified[rel] = self._check_file(rel, self.verified[rel][0], self.verified[rel])
        return self.root / rel

    @property
    def voices(self) -> list[str]:
        return list(self.manifest.get("voices", []))

    def voice_path(self, name: str) -> Path:
        return self.root / "voices" / f"{name}.npz"


def _minor_version(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])
