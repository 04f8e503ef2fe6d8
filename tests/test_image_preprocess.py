"""Image front end vs transformers' SiglipImageProcessor fed as upstream feeds it (`Image.open(f).convert("RGB")`),
and the clear errors for files that are not usable images."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omni_onnx.errors import BundleError, OmniError
from omni_onnx.export.random_siglip import PREPROCESSOR_CONFIG
from omni_onnx.image import ImagePreprocessor, preprocess_image

FIXTURES = Path(__file__).parent / "fixtures"
EVAL_IMAGES = sorted((FIXTURES / "eval_omni").glob("*.jpg"))


def hf_pixels(config: dict, path: Path) -> np.ndarray:
    from transformers import SiglipImageProcessorPil  # the PIL path upstream's processor takes (no torchvision)
    processor = SiglipImageProcessorPil(**config)
    return processor(images=Image.open(path).convert("RGB"), return_tensors="np")["pixel_values"]


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> list[Path]:
    """Non-square and non-RGB inputs: opaque and transparent RGBA, palette, grayscale, 16-bit grayscale, CMYK."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (300, 517, 4), dtype=np.uint8)
    opaque = rgba.copy()
    opaque[..., 3] = 255
    transparent = rgba.copy()
    transparent[:100, :200, 3] = 0
    files = {"rgba.png": Image.fromarray(opaque, "RGBA"),
             "transparent.png": Image.fromarray(transparent, "RGBA"),
             "transparent_la.png": Image.fromarray(transparent[..., 2:], "LA"),
             "palette.gif": Image.fromarray(rgba[..., :3], "RGB").quantize(64),
             "gray.jpg": Image.fromarray(rgba[..., 0]),
             "gray16.png": Image.fromarray(rng.integers(0, 65536, (199, 64), dtype=np.uint16)),
             "cmyk.jpg": Image.fromarray(rgba, "RGBA").convert("CMYK")}
    for name, img in files.items():
        img.save(d / name)
    return [d / n for n in files]


@pytest.mark.parametrize("path", EVAL_IMAGES, ids=lambda p: p.stem)
def test_eval_images_match_hf_processor(path):
    got = preprocess_image(path, ImagePreprocessor.from_hf_config(PREPROCESSOR_CONFIG))
    ref = hf_pixels(PREPROCESSOR_CONFIG, path)
    assert got.shape == ref.shape == (1, 3, 256, 256) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_other_modes_shapes_and_settings_match_hf_processor(odd_images):
    """Alpha, opaque or not, is dropped as upstream's `.convert("RGB")` drops it; the folder's filter, size, mean
    and std are used."""
    other = {**PREPROCESSOR_CONFIG, "resample": 3, "size": {"height": 224, "width": 160},
             "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    for config in (PREPROCESSOR_CONFIG, other):
        prep = ImagePreprocessor.from_hf_config(config)
        for path in odd_images:
            np.testing.assert_allclose(preprocess_image(path, prep), hf_pixels(config, path), rtol=0, atol=1e-6,
                                       err_msg=f"{path.name} with {config}")


def test_defaults_are_siglip2_fixed_res(tmp_path):
    from omni_onnx.export.random_siglip import write_random_siglip
    folder = write_random_siglip(tmp_path / "siglip", "tiny")
    written = json.loads((folder / "preprocessor_config.json").read_text())
    assert ImagePreprocessor.from_hf_config(written) == ImagePreprocessor()


BAD_INPUTS = {"missing": "does not exist", "folder": "is a folder", "text": "not an image", "empty": "not an image",
              "truncated": "damaged", "20 MP": r"5472x3656 \(20.0 MP\), over the 16.8 MP limit",
              "400 MP header": r"20000x20000 \(400.0 MP\), over the 16.8 MP limit"}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring `width` x `height` (8-bit gray) whose pixel data is a few bytes: what a huge image's header
    looks like, without writing hundreds of MB in a test."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(16))))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.jpg").write_text("this is not an image\n")
    (d / "empty.png").write_bytes(b"")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(d / "full.jpg")
    (d / "truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:3000])
    Image.new("L", (5472, 3656), 128).save(d / "20mp.png")  # 20.0 MP in a 27 kB file
    (d / "400mp.png").write_bytes(png_header_only(20000, 20000))  # over 2x Pillow's own limit: it would refuse first
    return {"missing": d / "nope.jpg", "folder": d, "text": d / "notes.jpg", "empty": d / "empty.png",
            "truncated": d / "truncated.jpg", "20 MP": d / "20mp.png", "400 MP header": d / "400mp.png"}


@pytest.mark.parametrize("label", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(bad_files, label):
    with pytest.raises(OmniError, match=BAD_INPUTS[label]):
        preprocess_image(bad_files[label])


def test_unsupported_preprocessor_config_is_refused():
    for bad in ({"size": {"shortest_edge": 224}}, {"do_resize": False}, {"image_mean": [0.5, 0.5]}):
        with pytest.raises(BundleError):
            ImagePreprocessor.from_hf_config({**PREPROCESSOR_CONFIG, **bad})
