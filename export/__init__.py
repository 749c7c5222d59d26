"""PyTorch side of avs-edge: model definitions, the selective-scan op, ONNX export and engine building."""
