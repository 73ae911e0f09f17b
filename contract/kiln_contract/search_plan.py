"""How a hyperparameter search is split across pods: shared by the operator (which creates the
shard Jobs and shows progress) and the trainer (which evaluates a shard and collects the results).

Pure functions of the spec's `search` section; no scikit-learn here.

- `candidate_count`: how many candidates the search evaluates (grid: the grid's size, or `trials`
  drawn from it when larger; random: `trials`, or the grid's size when every value is a list and
  the grid is smaller) — the same number scikit-learn's GridSearchCV / RandomizedSearchCV would
  evaluate in one pod.
- Candidate i belongs to shard i % shards (round-robin: neighbours in a grid, which often cost
  alike, land on different pods).
- Results live under `<version prefix>/search/`, one object per candidate, `c<i:05d>.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RESULTS_DIR = "search"
# Env the operator sets on the pods of a sharded search.
RESULTS_ENV = "KILN_SEARCH_RESULTS"  # where the per-candidate results live (every pod of the run)
SHARD_ENV = "KILN_SEARCH_SHARD"  # "<index>/<shards>" on a shard pod; absent on the final pod
INDEX_ENV = "JOB_COMPLETION_INDEX"  # what an Indexed Job sets; read when SHARD_ENV has no index
SHARDS_ENV = "KILN_SEARCH_SHARDS"


@dataclass(frozen=True)
class Plan:
    candidates: int
    shards: int
    parallelism: int


def grid_size(space: dict) -> int | None:
    if not space or any(not isinstance(v, list) for v in space.values()):
        return None
    return math.prod(len(v) for v in space.values())


def candidate_count(search: dict) -> int | None:
    """Candidates evaluated, or None when not known before the search runs (halving)."""
    method = search.get("method", "grid")
    if method == "halving":
        return None
    trials = int(search.get("trials", 20))
    size = grid_size(search.get("space") or {})
    if size is None:
        return trials
    return min(size, trials)


def plan(search: dict | None) -> Plan | None:
    """The shard plan of a search that runs across pods, or None when it runs in the training pod."""
    if not search:
        return None
    parallelism = int(search.get("parallelism", 1))
    total = candidate_count(search)
    if parallelism <= 1 or not total:
        return None
    shards = int(search.get("shards") or parallelism)
    shards = max(1, min(shards, total))
    return Plan(candidates=total, shards=shards, parallelism=min(parallelism, shards))


def shard_of(candidate: int, shards: int) -> int:
    return candidate % shards


def members(shard: int, shards: int, total: int) -> list[int]:
    return list(range(shard, total, shards))


def result_name(candidate: int) -> str:
    return f"c{candidate:05d}.json"


def candidate_of(name: str) -> int | None:
    base = name.rsplit("/", 1)[-1]
    if base.startswith("c") and base.endswith(".json") and base[1:-5].isdigit():
        return int(base[1:-5])
    return None


def parse_shard(value: str | None, index: str | None = None, shards: str | None = None) -> tuple[int, int] | None:
    """(index, shards) from "<i>/<n>", or from an Indexed Job's JOB_COMPLETION_INDEX and the shard count."""
    if value and "/" in value:
        i, n = value.split("/", 1)
        index, shards = i, n
    elif not (index and shards):
        return None
    i, n = int(index), int(shards)
    if not 0 <= i < n:
        raise ValueError(f"shard {i} outside 0..{n - 1}")
    return i, n
