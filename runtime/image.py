"""Image front end: an image file -> SigLIP `pixel_values` float32 [1, 3, H, W], with numpy and Pillow only.

It reproduces what upstream feeds the vision tower (eval_omni.py and the training dataset):
`Image.open(f).convert("RGB")`, then `SiglipImageProcessor` on the PIL path: resize to exactly H x W with the
folder's filter (no crop, aspect ratio not kept), `x * rescale_factor` in float64 cast to float32, `(x - mean) / std`.
Consequences, all as upstream: alpha is dropped (transparent pixels give the colour stored under them, which is
what upstream's model saw in training), EXIF orientation is ignored, and an animated file gives its first frame.

Images above `max_pixels` are refused rather than shrunk: the size is read from the header, before decoding, so a
huge or decompression-bomb file costs nothing; and a pre-shrink would change the pixels the tower sees, while the
model only ever sees H x W anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BundleError, OmniError

PREPROCESSOR_FILE = "preprocessor_config.json"  # the vision folder's settings, copied into the bundle
MAX_PIXELS = 4096 * 4096  # 16.8 MP: every 4K frame and 12 MP photo passes; 20 MP+ is refused
# SiglipImageProcessor's class defaults, for keys a preprocessor_config.json leaves out
_HF_DEFAULTS: dict[str, Any] = {"size": {"height": 224, "width": 224}, "resample": 3, "rescale_factor": 1 / 255,
                                "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                "do_resize": True, "do_rescale": True, "do_normalize": True}


@dataclass(frozen=True)
class ImagePreprocessor:
    """Settings of the vision folder's `preprocessor_config.json` (defaults: Google's SigLIP2 fixed-res 256)."""

    height: int = 256
    width: int = 256
    resample: int = 2  # PIL filter code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    max_pixels: int = MAX_PIXELS

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], max_pixels: int = MAX_PIXELS) -> ImagePreprocessor:
        """Read a SiglipImageProcessor config dict; raise BundleError for settings the fixed-size graph cannot take."""
        c = {**_HF_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
        size = c["size"]
        if not c["do_resize"] or not isinstance(size, Mapping) or {"height", "width"} - set(size) \
                or c.get("do_center_crop") or c.get("do_pad"):
            raise BundleError(f"unsupported image preprocessing (do_resize={c['do_resize']}, size={size}): the "
                              f"vision graph takes a fixed height x width; export with a SigLIP fixed-resolution "
                              f"folder such as siglip2-base-p32-256-ve")

        def triple(v: Any) -> tuple[float, float, float]:
            vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3)]
            if len(vals) != 3:
                raise BundleError(f"image mean/std {v} must have 3 values (RGB); the preprocessor config is broken")
            return vals[0], vals[1], vals[2]

        return cls(
            height=int(size["height"]), width=int(size["width"]), resample=int(c["resample"]),
            rescale_factor=float(c["rescale_factor"]) if c["do_rescale"] else 1.0,
            mean=triple(c["image_mean"]) if c["do_normalize"] else (0.0, 0.0, 0.0),
            std=triple(c["image_std"]) if c["do_normalize"] else (1.0, 1.0, 1.0),
            max_pixels=max_pixels,
        )


def preprocess_image(path: str | Path, prep: ImagePreprocessor = ImagePreprocessor()) -> np.ndarray:
    """Image file -> pixel_values float32 [1, 3, height, width]; OmniError for anything that is not a usable image."""
    rgb = open_rgb(path, prep.max_pixels)
    resized = rgb.resize((prep.width, prep.height), resample=Image.Resampling(prep.resample))
    x = (np.asarray(resized, dtype=np.uint8).astype(np.float64) * prep.rescale_factor).astype(np.float32)
    x = (x - np.array(prep.mean, np.float32)) / np.array(prep.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def open_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file to RGB exactly as upstream does (`Image.open(path).convert("RGB")`), after the checks."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise OmniError(f"image {path} {what}; pass a JPEG, PNG, WebP, BMP or GIF file")
    with _own_pixel_limit():
        try:
            img = Image.open(path)  # reads the header only
        except UnidentifiedImageError:
            raise OmniError(f"{path} is not an image Pillow can read; pass a JPEG, PNG, WebP, BMP or GIF file"
                            ) from None
        except OSError as e:
            raise OmniError(f"cannot read image {path}: {e}") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise OmniError(f"image {path} is {w}x{h} ({w * h / 1e6:.1f} MP), over the {max_pixels / 1e6:.1f} MP "
                            f"limit; downscale it first (the vision model only sees a small fixed-size copy)")
        try:
            return img.convert("RGB")  # alpha dropped, as upstream: the colour under transparent pixels is kept
        except Exception as e:  # truncated or corrupt data surfaces only when decoding, as OSError/ValueError/...
            raise OmniError(f"image {path} is damaged and cannot be decoded ({e}); re-save or re-download it") from None


@contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Pillow's decompression-bomb check off while the header is read, so our lower limit reports the real size
    (Pillow's own refuses only at 2x its limit, and says neither the size nor ours)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved
