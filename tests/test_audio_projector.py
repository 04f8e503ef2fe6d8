"""Audio projector graph vs our torch module (upstream MMAudioProjector layout), at several encoder lengths."""

from omni_onnx.contracts import audio_projector_spec
from omni_onnx.export import audio_projector
from omni_onnx.session import GraphSession


def test_audio_projector_parity_and_contract(tiny_torch_model, tmp_path):
    path = audio_projector.export(tiny_torch_model, tmp_path)
    audio_projector.verify(tiny_torch_model, path)
    GraphSession(path, audio_projector_spec(tiny_torch_model.cfg))
