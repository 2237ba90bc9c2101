"""TPN models in plain PyTorch: 3D ResNet backbone, TPN neck, heads, recognizer."""
