"""A second guard against two runs of one analysis at once: a per-analysis lock that each
run holds from before its first step to after its last one.

The run queue (a pool per analysis, `granularity: run`) is the first guard, but it only
sees queued runs, and it fails open: when its pool query fails (a database restart) the
daemon dequeues without limits (dagster-io/dagster#19181). `dagster asset materialize`,
`execute_in_process` and `materialize()` bypass it altogether. The lock works wherever a
run executes:

- **PostgreSQL** (the instance's storage, else AGENT_REPORTS_LEDGER_URL, when either is
  PostgreSQL): a session-level advisory lock on a connection of its own, so a holder that
  dies releases it with its connection, plus a holder record in the table
  `agent_reports_run_locks` (run id, pid, host, since, heartbeat). A database restart
  drops every session and so every advisory lock while the holders still run; the record
  is what keeps a waiter out then: a holder whose last heartbeat predates the restart gets
  RECONNECT_GRACE seconds to reconnect, re-take its lock and heartbeat again.
- **otherwise** an `flock` on `<state>/run_locks/<analysis>.lock`, released by the kernel
  when the holder dies; the file holds the holder's record while it is held.

The Dagster wiring is `with_run_locks(defs)`: each analysis asset (one that sits in a
pool) gets a step hook requiring the resource `run_lock_<pool>`, so every run of it
initialises that resource once, before its first step (in-process executor), and tears
it down after its last one. The resource takes the lock (waiting at most
AGENT_REPORTS_RUN_LOCK_TIMEOUT_SECONDS, then failing with the holder's name), logs and
tags the run with the holder, and the hook confirms after each step that the lock is
still this run's.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from dagster import (
    AssetsDefinition,
    ConfigurableResource,
    Definitions,
    HookContext,
    HookDefinition,
    InitResourceContext,
    success_hook,
)
from pydantic import Field, PrivateAttr

from agent_reports.core import settings

NAMESPACE = 0x41525054  # the advisory locks' first key: "ARPT"
HEARTBEAT_SECONDS = 2.0
RECONNECT_GRACE = 60.0  # how long after a database restart a holder has to reconnect
DEFAULT_TIMEOUT = 3600.0
RUN_TAG = "agent_reports/run_lock"


class RunLockTimeout(RuntimeError):
    """The lock stayed held by another run for longer than the wait allowed."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: the lock record shown to waiters, in run logs and run tags."""

    run_id: str
    pid: int
    host: str
    since: str  # ISO 8601, UTC

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.host}, since {self.since})"

    @classmethod
    def this_process(cls, run_id: str) -> Holder:
        return cls(run_id, os.getpid(), socket.gethostname(), _now())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


UNKNOWN = Holder("unknown", 0, "unknown", "unknown")
UNKNOWN_GRACE_SECONDS = 3.0


class Lock(Protocol):
    kind: str
    name: str

    def try_acquire(self, holder: Holder) -> Holder | None:
        """None once acquired; else who holds it (UNKNOWN when that cannot be read)."""

    def still_held(self) -> bool: ...

    def release(self) -> None: ...


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------ file lock


class FileLock:
    """`flock` on one file per analysis; the kernel releases it when the holder dies."""

    kind = "file"

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        self._fd: int | None = None

    def try_acquire(self, holder: Holder) -> Holder | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._read_holder()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        self._fd = fd
        return None

    def _read_holder(self) -> Holder:
        try:
            return Holder(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return UNKNOWN  # being written, or not a record

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


# ------------------------------------------------------------------------ PostgreSQL lock


class PostgresLock:
    """An advisory lock plus a heartbeated holder record (see the module docstring)."""

    kind = "postgresql"

    def __init__(self, dsn: str, name: str):
        self.dsn, self.name = dsn, name
        self._conn = None
        self._holder: Holder | None = None
        self._lost = False
        self._table_ready = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def _connect(self):
        import psycopg2

        run_id = self._holder.run_id if self._holder else "waiting"
        connection = psycopg2.connect(
            self.dsn,
            connect_timeout=5,
            application_name=self._application_name(run_id),
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        connection.autocommit = True
        return connection

    def _application_name(self, run_id: str) -> str:
        return f"run_lock {self.name} {run_id}"[:63]

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run one statement on the lock's own connection, (re)connecting first if needed;
        a broken connection is dropped so the next call reconnects."""
        import psycopg2

        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall() if cursor.description else []
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            with suppress(Exception):
                self._conn.close()
            self._conn = None
            raise

    def _ensure_table(self) -> None:
        import psycopg2

        if self._table_ready:
            return
        with suppress(psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateTable):
            self._query(
                "CREATE TABLE IF NOT EXISTS agent_reports_run_locks (name text PRIMARY KEY,"
                " run_id text NOT NULL, pid integer NOT NULL, host text NOT NULL,"
                " since text NOT NULL, heartbeat timestamptz NOT NULL)"
            )
        self._table_ready = True

    def _advisory(self, take: bool) -> bool:
        """pg_try_advisory_lock (take) or pg_advisory_unlock on this lock's key."""
        sql = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
        if not take:
            sql = "SELECT pg_advisory_unlock(%s, hashtext(%s))"
        return bool(self._query(sql, (NAMESPACE, self.name))[0][0])

    def try_acquire(self, holder: Holder) -> Holder | None:
        with self._guard:
            self._holder = holder  # names the connection after this run
            self._ensure_table()
            if not self._advisory(take=True):
                return self._recorded() or UNKNOWN
            previous = self._recorded()
            if previous and previous.run_id != holder.run_id and self._alive(previous):
                self._advisory(take=False)  # its holder lost it in a restart
                return previous
            self._query(
                "INSERT INTO agent_reports_run_locks (name, run_id, pid, host, since, heartbeat)"
                " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (name) DO UPDATE SET"
                " run_id = excluded.run_id, pid = excluded.pid, host = excluded.host,"
                " since = excluded.since, heartbeat = now()",
                (self.name, holder.run_id, holder.pid, holder.host, holder.since),
            )
        self._keeper = threading.Thread(target=self._keep, name=self.name, daemon=True)
        self._keeper.start()
        return None

    def _recorded(self) -> Holder | None:
        rows = self._query(
            "SELECT run_id, pid, host, since FROM agent_reports_run_locks WHERE name = %s",
            (self.name,),
        )
        return Holder(*rows[0]) if rows else None

    def _alive(self, holder: Holder) -> bool:
        """Whether a recorded holder whose advisory lock is gone may still be running: its
        connection is back (named after its run), or the database restarted after its last
        heartbeat and the grace to reconnect has not passed; a holder on this host whose
        process is gone is dead either way."""
        if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
            return False
        ((connected, restarted_since, in_grace),) = self._query(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s),"
            " (SELECT heartbeat FROM agent_reports_run_locks WHERE name = %s)"
            "   < pg_postmaster_start_time(),"
            " now() < pg_postmaster_start_time() + make_interval(secs => %s)",
            (self._application_name(holder.run_id), self.name, RECONNECT_GRACE),
        )
        return bool(connected or (restarted_since and in_grace))

    def _keep(self) -> None:
        """Heartbeat the record; after a lost connection, reconnect and re-take the lock."""
        import psycopg2

        held = True
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._guard:
                try:
                    if not held:
                        held = self._advisory(take=True)
                    rows = self._query(
                        "UPDATE agent_reports_run_locks SET heartbeat = now()"
                        " WHERE name = %s AND run_id = %s RETURNING 1",
                        (self.name, self._holder.run_id),
                    )
                    self._lost = not rows  # another run took the record over
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    held = False  # the session, and with it the advisory lock, is gone

    def still_held(self) -> bool:
        return self._holder is not None and not self._lost

    def release(self) -> None:
        """Delete the record and unlock; closing the connection drops the lock anyway, and
        a record left behind by a failed delete belongs to a dead process (see _alive)."""
        import psycopg2

        self._stop.set()
        if self._keeper:
            self._keeper.join(timeout=10)
        with self._guard:
            for _ in range(5):
                try:
                    self._query(
                        "DELETE FROM agent_reports_run_locks WHERE name = %s AND run_id = %s",
                        (self.name, self._holder.run_id),
                    )
                    break
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    time.sleep(1)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._holder = None


# ------------------------------------------------------------------------------- waiting


def acquire(
    lock: Lock,
    holder: Holder,
    timeout: float,
    on_wait: Callable[[Holder], None],
    poll: float = 0.5,
) -> tuple[Holder, float]:
    """Take the lock, waiting at most `timeout` seconds; returns the holder record as taken
    (`since` = now) and the seconds waited. A database that cannot be reached counts as a
    holder not known, and is tried again."""
    started = time.monotonic()
    reported: Holder | None = None
    while True:
        attempt = replace(holder, since=_now())
        try:
            other = lock.try_acquire(attempt)
        except Exception as error:  # the database is restarting or unreachable
            other = Holder(f"unknown ({type(error).__name__})", 0, "unknown", "unknown")
        if other is None:
            return attempt, time.monotonic() - started
        waited = time.monotonic() - started
        # A holder writes its record just after it takes the lock: an unknown holder is
        # reported only once it stays unknown, so the log names the run that holds it.
        if other != reported and (other != UNKNOWN or waited >= UNKNOWN_GRACE_SECONDS):
            on_wait(other)
            reported = other
        if waited >= timeout:
            raise RunLockTimeout(
                f"run lock {lock.name!r} is held by {other.describe()}; "
                f"gave up after waiting {waited:.0f}s (AGENT_REPORTS_RUN_LOCK_TIMEOUT_SECONDS)"
            )
        time.sleep(poll)


def postgres_dsn(instance_url: str | None) -> str | None:
    """The libpq URL of the PostgreSQL the lock lives in: the instance's storage, else the
    ledger's (AGENT_REPORTS_LEDGER_URL), else None (file locks)."""
    from sqlalchemy.engine import make_url

    for url in (instance_url, settings.env("AGENT_REPORTS_LEDGER_URL")):
        if url and make_url(url).get_backend_name() == "postgresql":
            return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return None


def open_lock(name: str, instance_url: str | None) -> Lock:
    dsn = postgres_dsn(instance_url)
    if dsn:
        return PostgresLock(dsn, name)
    return FileLock(settings.state_dir() / "run_locks" / f"{name}.lock", name)


# ------------------------------------------------------------------------- Dagster wiring


class RunLockResource(ConfigurableResource):
    """Holds one analysis' run lock for the whole run (see the module docstring)."""

    name: str = Field(description="the analysis (its pool) whose runs this lock serialises")
    timeout_seconds: float | None = Field(
        default=None,
        description="longest wait for another run's lock (env "
        "AGENT_REPORTS_RUN_LOCK_TIMEOUT_SECONDS, default 3600)",
    )
    _lock: Lock | None = PrivateAttr(default=None)
    _holder: Holder | None = PrivateAttr(default=None)

    def _timeout(self) -> float:
        if self.timeout_seconds is not None:
            return self.timeout_seconds
        text = settings.env("AGENT_REPORTS_RUN_LOCK_TIMEOUT_SECONDS")
        return float(text) if text else DEFAULT_TIMEOUT

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[RunLockResource]:
        run = context.dagster_run
        if run is None:  # a resource built outside a run (a unit test): nothing to guard
            yield self
            return
        instance_url = getattr(context.instance.run_storage, "postgres_url", None)
        lock = open_lock(self.name, instance_url)

        def waiting(other: Holder) -> None:
            context.log.warning(f"run lock {self.name}: waiting, held by {other.describe()}")

        holder, waited = acquire(lock, Holder.this_process(run.run_id), self._timeout(), waiting)
        try:
            record = f"{self.name} ({lock.kind}) held by {holder.describe()}; waited {waited:.1f}s"
            context.log.info(f"run lock {record}")
            context.instance.add_run_tags(run.run_id, {RUN_TAG: record})
            self._lock, self._holder = lock, holder
            yield self
        finally:
            lock.release()
            context.log.info(f"run lock {self.name} released by run {run.run_id}")

    def confirm(self, context: HookContext) -> None:
        """After a step: log that it ran under the lock, or loudly that the lock was lost."""
        if self._lock is None:
            return
        if self._lock.still_held():
            context.log.debug(f"{context.step_key} ran under run lock {self.name}")
        else:
            context.log.error(
                f"run lock {self.name} was taken over by another run while {context.step_key} "
                "ran: this run's lock record was replaced"
            )


def resource_key(pool: str) -> str:
    return f"run_lock_{pool}"


def _step_hook(pool: str) -> HookDefinition:
    key = resource_key(pool)

    @success_hook(name=f"{key}_held", required_resource_keys={key})
    def held(context: HookContext) -> None:
        getattr(context.resources, key).confirm(context)

    return held


def with_run_locks(defs: Definitions) -> Definitions:
    """The same definitions with every pooled asset holding its pool's run lock."""
    assets = list(defs.assets or [])
    pools = sorted({a.op.pool for a in assets if isinstance(a, AssetsDefinition) and a.op.pool})
    hooks = {pool: _step_hook(pool) for pool in pools}

    def locked(asset):
        pool = asset.op.pool if isinstance(asset, AssetsDefinition) else None
        return asset.with_hooks({hooks[pool]}) if pool else asset

    # Sorted keys: a run that spans pools takes their locks in one order (no deadlock).
    locks = {resource_key(pool): RunLockResource(name=pool) for pool in pools}
    return Definitions.merge(
        Definitions(assets=[locked(a) for a in assets], resources=locks),
        Definitions(
            asset_checks=defs.asset_checks,
            jobs=defs.jobs,
            schedules=defs.schedules,
            sensors=defs.sensors,
            resources=defs.resources,
            executor=defs.executor,
            loggers=defs.loggers,
            metadata=defs.metadata,
        ),
    )
