"""Colour math (`lab`), shard lists and the data loaders (`make_loader`: dali, torch, seed backends)."""

from pipeline.loader import make_loader

__all__ = ["make_loader"]
