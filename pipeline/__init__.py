"""Colour math (`lab`), shard lists and the data loaders (`make_loader`: dali, torch, seed backends)."""

__all__ = ["make_loader"]


def __getattr__(name: str):
    # Imported on first use, so torch-free modules of this package (`colour_constants`) stay usable
    # where torch is not wanted: the shard builder's worker processes.
    if name == "make_loader":
        from pipeline.loader import make_loader

        return make_loader
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
