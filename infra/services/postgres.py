"""A private PostgreSQL + PostGIS cluster with the pgstac schema, run as our child process.

The cluster lives in a directory of eomae's state dir, listens on 127.0.0.1 only (no unix
socket, so it never collides with a system PostgreSQL) and trusts local connections:
it holds nothing but the regenerable sample world. Starting it again on the same
directory reuses the cluster, so a warm start costs about a second.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
import pypgstac
from psycopg import sql
from pypgstac.db import PgstacDB
from pypgstac.migrate import Migrate

from infra.services.process import (
    ChildProcess,
    ServiceError,
    check_port_free,
    free_port,
    pid_running,
    port_is_free,
    timed,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install with: apt-get install postgresql-15 postgresql-15-postgis-3 "
    "(or run `bash infra/bootstrap.sh`)"
)
# Written into a requested data dir the server user cannot reach; names the real one.
RELOCATED_MARKER = "EOMAE_RELOCATED_TO"


@dataclass(frozen=True)
class PostgresInstall:
    """Where the PostgreSQL server binaries and their extension files are."""

    bindir: Path
    sharedir: Path | None

    def exe(self, name: str) -> str:
        """Path of one of the server programs."""
        return str(self.bindir / name)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def find_postgres() -> PostgresInstall:
    """Locate ``initdb``/``postgres`` and check PostGIS is installed for them.

    Looks in ``$EOMAE_PG_BINDIR``, then Debian's ``/usr/lib/postgresql/<major>/bin``
    (newest first; those are not on PATH), then PATH.
    """
    candidates: list[Path] = []
    if os.environ.get("EOMAE_PG_BINDIR"):
        candidates.append(Path(os.environ["EOMAE_PG_BINDIR"]))
    else:
        debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key)
        candidates += reversed(debian)
        on_path = shutil.which("postgres")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    bindir = next(
        (d for d in candidates if all(os.access(d / n, os.X_OK) for n in ("initdb", "postgres"))),
        None,
    )
    if bindir is None:
        looked = ", ".join(str(d) for d in candidates) or "PATH"
        raise ServiceError(
            f"PostgreSQL server binaries (initdb, postgres) not found (looked in {looked}); "
            + INSTALL_HINT
        )
    sharedir = None
    if os.access(bindir / "pg_config", os.X_OK):
        out = subprocess.run(
            [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=False
        )
        sharedir = Path(out.stdout.strip()) if out.returncode == 0 else None
    # Without pg_config we cannot look; CREATE EXTENSION reports it later instead.
    if sharedir is not None and not (sharedir / "extension" / "postgis.control").exists():
        raise ServiceError(
            f"the PostGIS extension is not installed for the PostgreSQL in {bindir} "
            f"(no {sharedir}/extension/postgis.control); " + INSTALL_HINT
        )
    return PostgresInstall(bindir=bindir, sharedir=sharedir)


def unprivileged_user() -> tuple[int, int] | None:
    """The (uid, gid) to run PostgreSQL as (it refuses root), or None to stay ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as e:
        raise ServiceError(
            "running as root, but there is no 'postgres' system user to run PostgreSQL as; "
            + INSTALL_HINT
        ) from e
    return pw.pw_uid, pw.pw_gid


@contextmanager
def pgstac_db(dsn: str) -> Iterator[PgstacDB]:
    """A PgstacDB whose connection pool is really closed afterwards.

    PgstacDB's own context manager forgets its pool without closing it, which leaves
    pool threads and an open connection behind.
    """
    db = PgstacDB(dsn=dsn)
    try:
        yield db
    finally:
        pool = db.pool
        db.disconnect()
        if pool is not None:
            pool.close()


class PostgresCluster:
    """A PostgreSQL cluster in ``data_dir`` serving one pgstac database on 127.0.0.1.

    Args:
        data_dir: cluster directory; created (initdb) when empty, reused otherwise. If the
            server user cannot reach it (a 0700 parent, /root), the cluster goes to a
            private directory under /tmp instead and ``data_dir`` records where.
        log_path: server log file.
        port: TCP port, or None for a free one.
        superuser: role created by initdb, trusted without password.
        database: database holding the pgstac schema.
    """

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        port: int | None = None,
        superuser: str = "eomae",
        database: str = "eomae",
    ) -> None:
        self.requested_dir = Path(data_dir).absolute()
        self.data_dir = self.requested_dir
        self.log_path = log_path
        self.requested_port = port
        self.port = port
        self.superuser = superuser
        self.database = database
        self.timings: dict[str, float] = {}
        self.created = False
        self._server: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        """Postmaster process id while running."""
        return self._server.pid if self._server is not None else None

    def dsn(self, database: str | None = None) -> str:
        """Connection URI (libpq) for ``database`` (default: the pgstac database)."""
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database or self.database}"

    def start(self) -> None:
        """Create the cluster if needed, start it, and bring pgstac to pypgstac's version."""
        if self._server is not None:
            return
        self.timings = {}
        self.created = False
        install = find_postgres()
        user = unprivileged_user()
        self.data_dir = self._resolve_data_dir(user)
        self._stop_stale_postmaster()
        if self.requested_port is not None:
            check_port_free(self.requested_port, "PostgreSQL server")
        elif self.port is None or not port_is_free(self.port):
            # A restart keeps its port when it can, so DSNs handed out stay valid.
            self.port = free_port()
        try:
            if not (self.data_dir / "PG_VERSION").exists():
                with timed(self.timings, "postgres.initdb", logger):
                    self._initdb(install, user)
            with timed(self.timings, "postgres.start", logger):
                self._spawn(install, user)
            with timed(self.timings, "postgres.migrate", logger):
                self._prepare_database()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint); idempotent."""
        if self._server is not None:
            self._server.stop(timeout=30)
            self._server = None
            logger.info("PostgreSQL stopped (%s)", self.data_dir)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- steps -----------------------------------------------------------------------

    def _resolve_data_dir(self, user: tuple[int, int] | None) -> Path:
        requested = self.requested_dir
        if (requested / "PG_VERSION").exists():
            return requested
        marker = requested / RELOCATED_MARKER
        if marker.exists():
            relocated = Path(marker.read_text().strip())
            if (relocated / "PG_VERSION").exists():
                logger.info("reusing the cluster in %s (see %s)", relocated, marker)
                return relocated
        requested.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user is None:
            return requested
        os.chown(requested, *user)
        if _reachable_by(requested, user):
            return requested
        relocated = Path(tempfile.mkdtemp(prefix="eomae-pgdata-"))
        os.chown(relocated, *user)
        marker.write_text(f"{relocated}\n")
        logger.warning(
            "the postgres user cannot reach %s (a parent directory is private); "
            "keeping the cluster in %s instead",
            requested,
            relocated,
        )
        return relocated

    def _stop_stale_postmaster(self) -> None:
        """Stop a postmaster that a crashed run left on our data dir.

        Our postmasters die with their parent (PR_SET_PDEATHSIG), so one still running
        was either orphaned (reparented to init) or belongs to a live session, which we
        must not kill.
        """
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return  # No pid file, or its process is gone: postgres handles a stale file.
        if b"postgres" not in cmdline or not pid_running(pid):
            return  # The pid was reused by something else.
        if parent != 1:
            raise ServiceError(
                f"the PostgreSQL cluster in {self.data_dir} is in use by postgres pid {pid} "
                f"(started by pid {parent}); stop that session or use another state directory"
            )
        logger.warning("stopping orphaned PostgreSQL pid %d on %s", pid, self.data_dir)
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while pid_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_running(pid):
            raise ServiceError(
                f"PostgreSQL pid {pid} still runs on {self.data_dir} after SIGINT; stop it first"
            )

    def _initdb(self, install: PostgresInstall, user: tuple[int, int] | None) -> None:
        argv = [
            install.exe("initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            # Skipping fsync of the fresh cluster saves seconds; a crash right after
            # initdb only means running initdb again.
            "--no-sync",
        ]
        uid, gid = user if user is not None else (None, None)
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.data_dir,
            user=uid,
            group=gid,
            extra_groups=[] if gid is not None else None,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}"
            )
        self.created = True
        logger.info("created a PostgreSQL cluster in %s", self.data_dir)

    def _spawn(self, install: PostgresInstall, user: tuple[int, int] | None) -> None:
        argv = [
            install.exe("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            # Durable enough for a regenerable world and much faster for bulk loads;
            # unlike fsync=off it cannot corrupt the cluster on a crash.
            "-c",
            "synchronous_commit=off",
        ]
        self._server = ChildProcess(
            "postgres",
            argv,
            self.log_path,
            env={**os.environ, "LC_ALL": "C"},
            cwd=self.data_dir,
            stop_signal=signal.SIGINT,
            user=user,
        )
        self._server.start()
        self._wait_ready(timeout=60)
        logger.info("PostgreSQL listening on 127.0.0.1:%d (%s)", self.port, self.data_dir)

    def _wait_ready(self, timeout: float) -> None:
        assert self._server is not None
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self._server.alive():
                raise self._server.died_error("starting")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as e:
                last = e
                time.sleep(0.1)
        raise ServiceError(
            f"PostgreSQL did not accept connections on port {self.port} within {timeout:.0f} s "
            f"({last}); log {self.log_path}:\n{self._server.log_tail()}"
        )

    def _prepare_database(self) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.database]
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            except psycopg.Error as e:
                raise ServiceError(
                    f"cannot enable PostGIS in the local PostgreSQL ({e}); " + INSTALL_HINT
                ) from e
        with pgstac_db(self.dsn()) as db:
            current = db.version
            if current == pypgstac.__version__:
                logger.info("pgstac schema already at %s", current)
                return
            logger.info("migrating pgstac schema %s -> %s", current, pypgstac.__version__)
            Migrate(db).run_migration()


def _reachable_by(path: Path, user: tuple[int, int]) -> bool:
    """Whether ``user`` can enter and write ``path`` (every parent must be traversable)."""
    uid, gid = user
    result = subprocess.run(
        ["test", "-w", str(path), "-a", "-x", str(path)],
        user=uid,
        group=gid,
        extra_groups=[],
        check=False,
    )
    return result.returncode == 0
