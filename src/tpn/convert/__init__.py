"""Foreign checkpoints in and out: `weights.py` reads them (format detection, renaming by the
rule tables of `mappings.py`, strict loading, `load_model`), `paddle.py` reads Paddle files,
`inflate.py` turns 2D ResNets into the 3D backbone, `export.py` writes ONNX. See docs/convert.md."""
