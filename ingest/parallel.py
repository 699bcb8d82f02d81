"""Ray tasks with a bound on how many are in flight, results as they finish.

Used by every stage that fans work out (ingest units, shard scans and writes). A task
that raises, or whose worker dies, comes back as an error for that call instead of
ending the run: the caller records it and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray


def init_ray(address: str | None, **options: Any) -> None:
    """Connect to `address` ($RAY_ADDRESS or a new local Ray when None), once per process.

    "local" is explicit because Ray's own default also joins whatever cluster
    /tmp/ray/ray_current_cluster names, which outlives a crashed `ray start` and would
    make a plain run fail to connect to a head that is long gone. A new local instance
    listens on loopback only (see `_loopback_node`); a cluster's address is the user's.
    `options` go to `ray.init` (e.g. num_cpus).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        with _loopback_node():
            ray.init(address="local", log_to_driver=False, include_dashboard=False, **options)
    else:
        ray.init(address=address, log_to_driver=False, include_dashboard=False, **options)


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Make a local Ray start with node address 127.0.0.1, so it binds loopback only.

    Ray binds its GCS, raylet and worker servers to every interface unless the node's
    address is 127.0.0.1, and `ray.init(_node_ip_address="127.0.0.1")` is rewritten to
    the machine's external address. The one switch Ray honours is the one it uses on
    macOS and Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: "no cluster, use
    loopback"), read when the node's address is first resolved; with auth disabled, as
    in the demo, anything else would let anyone on the network run code here.
    """
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


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
    try:
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
    finally:
        _abandon(list(pending))


def _abandon(refs: list[Any], wait_s: float = 10.0) -> None:
    """Cancel the tasks a caller no longer wants and collect their outcomes.

    A caller that stops at the first error leaves tasks running; their own errors,
    never collected, would each be printed by Ray as "Unhandled error" after the
    caller's clear message.
    """
    for ref in refs:
        ray.cancel(ref)
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    for ref in done:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass  # cancelled, or failed as the one the caller stopped at
