"""Export-time tools (torch allowed): checkpoint loaders, torch reference modules, ONNX export with parity checks."""
