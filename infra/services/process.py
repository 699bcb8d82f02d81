"""Child processes that cannot outlive eomae, and the ports they listen on.

Every local service (PostgreSQL, the STAC API, the COG server) runs as a direct child
of the Python process that started it. Each child asks the kernel for a signal when
its parent dies (``prctl(PR_SET_PDEATHSIG)``), so even a SIGKILLed parent leaves no
orphaned server holding a port or a data directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class ServiceError(RuntimeError):
    """A local service could not be started or used; the message says what to do."""


def _die_with_parent(sig: int, parent_pid: int) -> Callable[[], None]:
    """Build a ``preexec_fn`` that makes the child receive ``sig`` when the parent dies.

    Runs in the forked child after ``Popen`` has switched user, which matters: the kernel
    clears the death signal whenever the credentials change. The signal is tied to the
    *thread* that forked, so services should be started from a long-lived thread.
    """

    def preexec() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return preexec


class ChildProcess:
    """One server process with its own log file, stopped by a signal and reaped.

    Args:
        name: short name used in logs and error messages (``"postgres"``).
        argv: the command line.
        log_path: file that receives the child's stdout and stderr (appended).
        env: complete environment for the child.
        cwd: working directory (servers that read ``.env`` files must not find ours).
        stop_signal: signal that asks the server for a clean, fast shutdown; also the
            signal it receives if we die.
        user: (uid, gid) to run as, or None for the current user.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        user: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.user = user
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id while started, else None."""
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        """Spawn the process; returns at once (use a readiness check to wait for it)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.argv}\n".encode())
            log.flush()
            uid, gid = self.user if self.user is not None else (None, None)
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                user=uid,
                group=gid,
                extra_groups=[] if gid is not None else None,
                # Own session: a Ctrl-C in the terminal reaches only us, and we stop the
                # services in order (API before database) instead of all at once.
                start_new_session=True,
                preexec_fn=_die_with_parent(self.stop_signal, os.getpid()),
            )
        logger.debug("%s started, pid %d, log %s", self.name, self.popen.pid, self.log_path)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def died_error(self, doing: str) -> ServiceError:
        """Error for a process that exited while we waited on it."""
        code = self.popen.returncode if self.popen is not None else None
        return ServiceError(
            f"{self.name} exited with code {code} while {doing}; log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the process to stop, escalate to SIGKILL after ``timeout``; idempotent."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            logger.debug("stopping %s (pid %d)", self.name, self.popen.pid)
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s, killing it", self.name, timeout)
                self.popen.kill()
                self.popen.wait()
        self.popen = None


@contextmanager
def timed(timings: dict[str, float], phase: str, log: logging.Logger) -> Iterator[None]:
    """Record how long ``phase`` took in ``timings`` (seconds) and log it."""
    start = time.perf_counter()
    yield
    timings[phase] = round(time.perf_counter() - start, 3)
    log.info("%s took %.2f s", phase, timings[phase])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bind_error(port: int) -> OSError | None:
    """Why binding 127.0.0.1:``port`` fails, or None if a server could listen there.

    SO_REUSEADDR mirrors what uvicorn and PostgreSQL do, so a port in TIME_WAIT from a
    previous run counts as free and only a live listener counts as busy.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e
    return None


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    return _bind_error(port) is None


def check_port_free(port: int, what: str) -> None:
    """Raise ServiceError naming ``port`` and its intended use if it cannot be bound."""
    error = _bind_error(port)
    if error is not None:
        busy = error.errno == errno.EADDRINUSE
        reason = "is already in use" if busy else f"cannot be used: {error}"
        raise ServiceError(
            f"port {port} for the {what} {reason} on 127.0.0.1; "
            "stop whatever listens there or choose another port"
        )


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie waiting to be reaped does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state field follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_http_ready(url: str, child: ChildProcess, timeout: float, interval: float = 0.1) -> None:
    """Poll ``url`` until it answers 200, failing fast if ``child`` dies meanwhile."""
    # No proxies: an http_proxy from the environment must not intercept 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.died_error(f"waiting for {url}")
        try:
            with opener.open(url, timeout=2.0) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read(200)!r}"
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        time.sleep(interval)
    raise ServiceError(
        f"{child.name} did not become ready at {url} within {timeout:.0f} s ({last}); "
        f"log {child.log_path}:\n{child.log_tail()}"
    )


class UvicornServer:
    """An ASGI app factory served by uvicorn as a child process on 127.0.0.1.

    Subclasses name the app (``APP``), the service (``NAME``), the path that answers once
    the server is really ready (``HEALTH_PATH``) and the child's environment.
    """

    NAME = "server"
    APP = ""
    HEALTH_PATH = "/"
    LOG_LEVEL = "warning"

    def __init__(self, port: int, log_path: Path, cwd: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.cwd = cwd
        self._process: ChildProcess | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of uvicorn while running."""
        return self._process.pid if self._process is not None else None

    def environment(self) -> dict[str, str]:
        """Environment of the child process."""
        return dict(os.environ)

    def spawn(self) -> None:
        """Start uvicorn without waiting for it (see ``wait_ready``)."""
        check_port_free(self.port, self.NAME)
        self.cwd.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "uvicorn", self.APP, "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", self.LOG_LEVEL,
        ]  # fmt: skip
        self._process = ChildProcess(
            self.NAME, argv, self.log_path, env=self.environment(), cwd=self.cwd
        )
        self._process.start()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until HEALTH_PATH answers, or raise with the server's log tail."""
        assert self._process is not None, "spawn() first"
        wait_http_ready(f"{self.url}{self.HEALTH_PATH}", self._process, timeout)
        logger.info("%s at %s", self.NAME, self.url)

    def stop(self) -> None:
        """Stop uvicorn; idempotent."""
        if self._process is not None:
            self._process.stop()
            self._process = None
