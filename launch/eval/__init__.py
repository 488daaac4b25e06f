"""Evaluation: `colorize-eval`, the metrics it and training share, and FID."""
