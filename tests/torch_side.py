"""The reference side of the multimodal end-to-end tests: upstream's own processing in torch/transformers
(SigLIP processor and tower, our SenseVoice module, projectors) and upstream-style injection into the prompt."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import SiglipImageProcessor, SiglipVisionModel

from omni_onnx.export.sensevoice import load_sensevoice
from omni_onnx.speech import features, load_audio, parse_am_mvn


class TorchEncoders:
    def __init__(self, model, siglip_dir: Path, sensevoice_dir: Path):
        self.model = model
        self.processor = SiglipImageProcessor.from_pretrained(str(siglip_dir))
        self.tower = SiglipVisionModel.from_pretrained(str(siglip_dir)).eval()
        self.encoder, _ = load_sensevoice(sensevoice_dir)
        self.cmvn = parse_am_mvn((sensevoice_dir / "am.mvn").read_text())

    @torch.no_grad()
    def image(self, path: Path) -> torch.Tensor:
        pixels = self.processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
        return self.model.vision_project(self.tower(pixel_values=pixels).last_hidden_state)[0]

    @torch.no_grad()
    def audio(self, path: Path) -> torch.Tensor:
        x = torch.from_numpy(features(load_audio(path), self.cmvn))[None]
        rows = self.encoder.encoder(x, torch.ones(x.shape[:2], dtype=torch.bool))
        return self.model.audio_project(rows)[0]

    @torch.no_grad()
    def prefill_embeds(self, ids: list[int], audio: torch.Tensor | None, images: list[torch.Tensor]) -> torch.Tensor:
        """Token embeddings with the audio rows at the first run of 16 and image k at the k-th run of 12."""
        h = self.model.model.embed_tokens(torch.tensor([ids]))[0]
        if audio is not None:
            a = ids.index(16)
            h[a:a + len(audio)] = audio
        starts = [i for i, t in enumerate(ids) if t == 12 and (i == 0 or ids[i - 1] != 12)]
        for s, img in zip(starts, images):
            h[s:s + len(img)] = img
        return h[None]
