"""`python -m pipelines.shards add [N ...]` / `next` / `list`: register generation shards (dynamic partitions)."""

import sys

import dagster as dg

from assets.common.data.shards import shard_index, shard_key
from assets.common.orchestration.resources import GENERATION_SHARDS


def next_shard(instance: dg.DagsterInstance) -> str:
    existing = [shard_index(k) for k in instance.get_dynamic_partitions(GENERATION_SHARDS.name)]
    return shard_key(max(existing, default=-1) + 1)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("add", "next", "list"):
        print(__doc__, file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        if argv[0] == "list":
            print("\n".join(sorted(instance.get_dynamic_partitions(GENERATION_SHARDS.name))))
            return 0
        keys = [next_shard(instance)] if argv[0] == "next" else [shard_key(int(n)) for n in argv[1:] or ["0"]]
        new = [k for k in keys if not instance.has_dynamic_partition(GENERATION_SHARDS.name, k)]
        if new:
            instance.add_dynamic_partitions(GENERATION_SHARDS.name, new)
        print(" ".join(keys))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
