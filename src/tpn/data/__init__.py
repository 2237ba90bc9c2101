"""Video data: decoding, frame sampling, transforms, datasets, synthetic videos."""
