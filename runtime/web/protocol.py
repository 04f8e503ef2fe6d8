"""The page <-> server messages and their limits. Text frames are JSON objects with a `type`; binary frames start
with one tag byte:

  up    0x01 + int16 LE PCM, 16 kHz mono (microphone)
        0x02 / 0x03 + u16 BE header length + JSON header {"name": ...} + file bytes (image / voice recording)
  down  0x01 + int16 LE PCM at the model's rate (24 kHz), one decoded frame per message

Anything else ends that connection with a message saying what was wrong; the server keeps serving the others.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from .dialogue import Command

MIC, IMAGE, CLIP = 1, 2, 3
AUDIO_DOWN = 1
MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    image_bytes: int = 8 * MB
    clip_bytes: int = 8 * MB
    mic_bytes: int = 32000  # 1 s of 16 kHz int16 per message (the page sends 32 ms)
    text_chars: int = 4000
    json_bytes: int = 16384

    @property
    def message_bytes(self) -> int:
        """The WebSocket layer drops larger messages before they are read whole."""
        return max(self.image_bytes, self.clip_bytes) + 4096


class ProtocolError(Exception):
    """The page sent something it should not: this connection ends with the message."""


IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")
CLIP_MAGIC = (b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")


def _is_riff(data: bytes, form: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == form


def image_ok(data: bytes) -> bool:
    return data.startswith(IMAGE_MAGIC) or _is_riff(data, b"WEBP")


def clip_ok(data: bytes) -> bool:
    return data.startswith(CLIP_MAGIC) or _is_riff(data, b"WAVE")


def mic_pcm(payload: bytes, limits: Limits) -> np.ndarray:
    if len(payload) % 2 or len(payload) > limits.mic_bytes:
        raise ProtocolError(f"microphone message of {len(payload)} bytes; expected int16 PCM of at most "
                            f"{limits.mic_bytes} bytes")
    return np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0


class UploadRefused(Exception):
    """An upload the user can fix (too big, wrong type): refused with a message, the connection stays."""


def upload(tag: int, payload: bytes, limits: Limits) -> Command:
    if len(payload) < 2:
        raise ProtocolError("upload without its header")
    (n,) = struct.unpack(">H", payload[:2])
    try:
        header = json.loads(payload[2:2 + n])
        name = str(header["name"])[:200]
    except (ValueError, KeyError, TypeError):
        raise ProtocolError("upload header is not JSON with a name") from None
    data = payload[2 + n:]
    if tag == IMAGE:
        if len(data) > limits.image_bytes:
            raise UploadRefused(f"image {name!r} is {len(data) / MB:.1f} MB; the limit is "
                                f"{limits.image_bytes / MB:g} MB: downscale it first")
        if not image_ok(data):
            raise UploadRefused(f"{name!r} is not a JPEG, PNG, WebP, BMP or GIF image")
        return Command("image", name, data)
    if len(data) > limits.clip_bytes:
        raise UploadRefused(f"recording {name!r} is {len(data) / MB:.1f} MB; the limit is "
                            f"{limits.clip_bytes / MB:g} MB: 3 to 6 s of speech is enough")
    if not clip_ok(data):
        raise UploadRefused(f"{name!r} is not a wav, flac, ogg or mp3 recording")
    return Command("clone", str(header.get("voice", "")), data)


def command(text: str, limits: Limits) -> tuple[str, dict]:
    """A JSON text frame -> (type, message); ProtocolError for anything malformed."""
    if len(text) > limits.json_bytes:
        raise ProtocolError(f"message of {len(text)} characters; the limit is {limits.json_bytes}")
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError("a text message that is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("a message without a type")
    kind = msg["type"]
    if kind == "text":
        t = msg.get("text")
        if not isinstance(t, str) or not t.strip():
            raise UploadRefused("the question is empty; type something")
        if len(t) > limits.text_chars:
            raise UploadRefused(f"the question is {len(t)} characters; the limit is {limits.text_chars}")
    elif kind == "played":
        if not all(isinstance(msg.get(k), int) and msg[k] >= 0 for k in ("epoch", "samples")):
            raise ProtocolError("played report without integer epoch and samples")
    elif kind == "mic":
        if not isinstance(msg.get("on"), bool):
            raise ProtocolError("mic message without on: true/false")
    elif kind == "voice":
        if msg.get("name") is not None and not isinstance(msg["name"], str):
            raise ProtocolError("voice message with a name that is not a string")
    elif kind not in ("reset", "stop"):
        raise ProtocolError(f"unknown message type {kind[:40]!r}")
    return kind, msg


def audio_frame(pcm: np.ndarray) -> bytes:
    return bytes([AUDIO_DOWN]) + (np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
