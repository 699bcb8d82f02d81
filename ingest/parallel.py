"""Ray tasks with a bound on how many are in flight, results as they finish.

Used by every stage that fans work out (ingest units, shard scans and writes). A task
that raises, or whose worker dies, comes back as an error for that call instead of
ending the run: the caller records it and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray


def init_ray(address: str | None) -> None:
    """Connect to `address` ($RAY_ADDRESS or a new local Ray when None), once per process.

    "local" is explicit because Ray's own default also joins whatever cluster
    /tmp/ray/ray_current_cluster names, which outlives a crashed `ray start` and would
    make a plain run fail to connect to a head that is long gone.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, log_to_driver=False, include_dashboard=False)


def imap_unordered(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    max_in_flight: int,
    *,
    address: str | None = None,
) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Run `fn(*call)` for each call as a Ray task; yield (index, result, error) as each ends.

    `error` is the task's exception (the cause, unwrapped from Ray's) or None.
    """
    init_ray(address)
    # Any: ray's typed overloads of .remote stop short of arbitrary signatures.
    task: Any = ray.remote(num_cpus=1, max_retries=0)(fn)
    pending: dict[Any, int] = {}  # ObjectRef -> index of the call
    next_call = 0
    while next_call < len(calls) or pending:
        while next_call < len(calls) and len(pending) < max_in_flight:
            pending[task.remote(*calls[next_call])] = next_call
            next_call += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        try:
            yield index, ray.get(ready[0]), None
        except ray.exceptions.RayError as e:
            yield index, None, getattr(e, "cause", None) or e
