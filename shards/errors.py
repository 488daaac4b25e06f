"""The one error type of the shard builder: a user mistake worth one clear line, never a traceback."""

from __future__ import annotations


class ShardsError(Exception):
    """A bad source folder, output folder, option or shard; the message names the file/key/value."""
