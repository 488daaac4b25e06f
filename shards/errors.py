"""The shard builder's error: a user mistake worth one clear line, never a traceback. (A shards
folder that cannot be read back is `pipeline.shard_list.ShardsDirError`; a shard whose data is bad
while training is `pipeline.loader_base.BadShardError`.)"""

from __future__ import annotations


class BuildError(Exception):
    """A bad source (folder or archive), output folder or option; the message names the file/key/value."""
