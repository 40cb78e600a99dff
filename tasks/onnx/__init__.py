"""ONNX: export from PyTorch, int8 quantization, and checked onnxruntime
sessions."""
