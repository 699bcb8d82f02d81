"""The local Ray that eomae starts is reachable from this machine only."""

from __future__ import annotations

import gc
import os
import time

import pytest
import ray
from procfs import descendants, is_loopback, listening, name  # tests/ingest is on sys.path

from ingest.parallel import imap_unordered

pytestmark = pytest.mark.usefixtures("ray_session")


def test_the_local_ray_listens_on_loopback_only() -> None:
    """Ray binds every interface unless its node address is loopback; auth is off in the demo."""
    # A task makes sure a worker process (with its own server) is up too.
    assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()
    ray_pids = [os.getpid()] + [
        p for p in descendants(os.getpid()) if "ray" in name(p) or name(p) == "gcs_server"
    ]
    bound = {(name(pid), address) for pid in ray_pids for address in listening(pid)}
    assert {"gcs_server", "raylet"} <= {n for n, _ in bound}, bound
    exposed = sorted((n, str(a)) for n, a in bound if not is_loopback(a))
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_a_caller_that_stops_early_hears_no_more_of_its_tasks(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Tasks a caller no longer waits for are cancelled and their failures collected:
    otherwise Ray prints an "Unhandled error" for each after the caller's own message."""

    def fail(i: int) -> None:  # local: pickled by value for the workers
        time.sleep(i)
        raise ValueError(f"call {i} fails")

    def stop_at_first_error() -> None:
        for _, _, error in imap_unordered(fail, [(0,), (1,), (1,)], max_in_flight=3):
            if error is not None:
                raise RuntimeError("stopped at the first error") from error

    with pytest.raises(RuntimeError, match="first error") as raised:
        stop_at_first_error()
    assert "call 0 fails" in str(raised.value.__cause__)
    gc.collect()
    time.sleep(3)  # Ray reports an unhandled error when the last reference to it is gone
    out, err = capfd.readouterr()
    assert "Unhandled error" not in out + err + caplog.text
