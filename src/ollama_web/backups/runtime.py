"""Automatic backups inside the server: startup, shutdown, every BACKUP_INTERVAL_HOURS.

With several workers exactly one takes the automatic backups: the one holding the scheduler
lock (the others retry for it on every tick, so the job moves if that worker dies). The
next periodic backup is due BACKUP_INTERVAL_HOURS after the newest backup on disk, so a
restart does not reset the clock and every worker reports the same `next_scheduled_at`.
Backups run in a worker thread; a failure is logged and shown in /health, never fatal.
The last attempt's failure is kept in DATA_DIR (`LAST_ATTEMPT_NAME`), not only in the
memory of the worker that made it, so that /health says it whichever worker answers; so is
a backup directory the leader cannot even take its lock in (read-only, say), where no
automatic backup could ever run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ollama_web.backups.errors import BackupBusyError, BackupDirectoryError, BackupError
from ollama_web.backups.locks import SCHEDULER_LOCK_NAME, FileLock, LockBusyError
from ollama_web.backups.models import BackupInfo
from ollama_web.backups.service import (
    MODE_EXTERNAL,
    DatabaseBackup,
    newest_backup,
    write_atomically,
)
from ollama_web.health.service import DEGRADED, HEALTHY

logger = logging.getLogger("ollama_web.backups")

TICK_SECONDS = 60.0
RETRY_AFTER_FAILURE_SECONDS = 300.0
HTTP_LOCK_TIMEOUT_SECONDS = 10.0
LAST_ATTEMPT_NAME = ".backup-last-attempt.json"


class BackupRuntime:
    def __init__(self, service: DatabaseBackup) -> None:
        self.service = service
        self.settings = service.settings
        self.scheduler_lock = FileLock(service.directory / SCHEDULER_LOCK_NAME)
        self._last_attempt = self.settings.data_dir / LAST_ATTEMPT_NAME
        self._unrecorded: dict[str, Any] | None = None
        self._cannot_lead: str | None = None
        self._cannot_list = False
        self._next_attempt = 0.0
        self._task: asyncio.Task[None] | None = None
        self._startup: asyncio.Task[None] | None = None

    @property
    def interval(self) -> timedelta | None:
        hours = self.settings.backup_interval_hours
        return timedelta(hours=hours) if hours > 0 else None

    @property
    def automatic(self) -> bool:
        return self.settings.backup_enabled and self.service.mode != MODE_EXTERNAL

    def _standing_error(self, newest: BackupInfo | None) -> str | None:
        """Why the last backup attempt failed (by any worker), or None: it failed after
        the newest backup was taken. The newer of the state in DATA_DIR and this worker's
        own, kept when that file could not be written (DATA_DIR full): a success the file
        missed shows in the backup it made, a failure it missed in this worker's memory."""
        states = [self._unrecorded] if self._unrecorded else []
        try:
            recorded = json.loads(self._last_attempt.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict):
            states.append(recorded)
        state = max(states, key=_attempted_at, default=None)
        error = state.get("error") if state else None
        if state is None or not isinstance(error, str):
            return None
        if newest is not None and newest.created_at > _attempted_at(state):
            return None
        return error

    def _record(self, error: str | None) -> None:
        if error is None and not self._last_attempt.exists():
            self._unrecorded = None
            return
        state = {"error": error, "at": datetime.now(UTC).isoformat()}
        try:
            write_atomically(self._last_attempt, json.dumps(state))
        except OSError as exc:
            self._unrecorded = state
            logger.warning("cannot record the backup attempt in %s: %s", self._last_attempt, exc)
        else:
            self._unrecorded = None

    def try_lead(self) -> bool:
        """Take the scheduler lock if no worker holds it. A lock that cannot even be made
        (a read-only or missing backup directory) is a failure of every automatic backup:
        logged once and recorded, as a failed backup is."""
        if not self.scheduler_lock.held:
            try:
                self.scheduler_lock.acquire(timeout=0)
            except LockBusyError:
                pass
            except OSError as exc:
                error = f"automatic backups cannot run: {exc.strerror or type(exc).__name__}"
                if self._cannot_lead != error:
                    self._cannot_lead = error
                    logger.error("automatic backups cannot run: %s", exc)
                    self._record(error)
                return False
            if self._cannot_lead is not None:
                self._cannot_lead = None
                self._record(None)
        return self.scheduler_lock.held

    async def backup(
        self, reason: str, *, lock_timeout: float | None = None, unless_unchanged: bool = False
    ) -> BackupInfo | None:
        """Take one (see `DatabaseBackup.create_backup`); a failure (not a backup already in
        progress) is the last attempt's state /health reports, whatever took it (a
        schedule, the API)."""
        try:
            info = await asyncio.to_thread(
                functools.partial(
                    self.service.create_backup,
                    reason,
                    lock_timeout=lock_timeout,
                    unless_unchanged=unless_unchanged,
                )
            )
        except BackupBusyError:
            raise
        except (BackupError, OSError) as exc:
            await asyncio.to_thread(self._record, f"{reason}: {public_reason(exc)}")
            raise
        await asyncio.to_thread(self._record, None)
        return info

    async def automatic_backup(self, reason: str, *, unless_unchanged: bool = False) -> None:
        """A startup/shutdown/scheduled backup: failures are logged, never raised. The
        startup and shutdown ones are taken `unless_unchanged` (see `create_backup`)."""
        try:
            await self.backup(reason, unless_unchanged=unless_unchanged)
        except (BackupError, OSError) as exc:
            self._next_attempt = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS
            logger.error("automatic backup (%s) failed: %s", reason, exc)

    def start_startup_backup(self) -> None:
        """The startup backup, in the background: a large database must not hold the
        server's readiness for as long as its copy and compression take."""
        self._startup = asyncio.create_task(
            self.automatic_backup("startup", unless_unchanged=True), name="backup-startup"
        )

    async def startup_backup_done(self) -> None:
        if self._startup is not None:
            await asyncio.shield(self._startup)

    def next_scheduled_at(self, newest: BackupInfo | None) -> datetime | None:
        interval = self.interval
        if interval is None or not self.automatic:
            return None
        if newest is None:
            return datetime.now(UTC)
        return newest.created_at + interval

    def _seconds_until_due(self) -> float | None:
        """None while BACKUP_DIR cannot be listed (logged once; /health says it): the
        scheduler keeps looking, rather than end its task on the error for good."""
        try:
            backups = self.service.list_backups()
        except BackupDirectoryError as exc:
            if not self._cannot_list:
                logger.error("automatic backups are waiting: %s", exc)
            self._cannot_list = True
            return None
        if self._cannot_list:
            self._cannot_list = False
            logger.info("automatic backups resume: the backup directory can be read again")
        due = self.next_scheduled_at(newest_backup(backups))
        if due is None:
            return TICK_SECONDS
        return (due - datetime.now(UTC)).total_seconds()

    async def _run_scheduler(self) -> None:
        interval = self.interval
        assert interval is not None
        pause = min(TICK_SECONDS, interval.total_seconds())
        await self.startup_backup_done()  # it counts as the newest backup
        while True:
            wait = pause
            if self.try_lead() and time.monotonic() >= self._next_attempt:
                remaining = await asyncio.to_thread(self._seconds_until_due)
                if remaining is not None and remaining <= 0:
                    await self.automatic_backup("scheduled")
                    # Nothing to back up yet (no users) or a failure: do not spin.
                    self._next_attempt = max(self._next_attempt, time.monotonic() + pause)
                    continue
                wait = pause if remaining is None else min(pause, remaining)
            await asyncio.sleep(max(wait, 0.05))

    def start_scheduler(self) -> None:
        if self.automatic and self.interval is not None:
            self._task = asyncio.create_task(self._run_scheduler(), name="backup-scheduler")

    async def stop_scheduler(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # Reports -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The contract's `GET /backup/status` body (plus `mode`)."""
        backups = self.service.list_backups()
        newest = newest_backup(backups)
        next_at = self.next_scheduled_at(newest)
        return {
            "enabled": self.automatic,
            "mode": self.service.mode,
            "directory": str(self.service.directory.resolve()),
            "last_backup": newest.public() if newest else None,
            "count": len(backups),
            "total_size_bytes": sum(info.size_bytes for info in backups),
            "retention_days": self.settings.backup_retention_days,
            "max_count": self.settings.backup_max_count,
            "next_scheduled_at": next_at.isoformat() if next_at else None,
            "free_bytes": self.service.free_bytes(),
        }

    def health(self) -> dict[str, Any]:
        """The `backups` component of /health: freshness and the last failure (of any
        backup: a scheduled one, or one asked for when automatic backups are off)."""
        try:
            backups = self.service.list_backups()
        except BackupDirectoryError as exc:
            error = exc.message  # without the path, which the public /health must not show
            mode = self.service.mode
            return {"status": DEGRADED, "enabled": self.automatic, "mode": mode, "error": error}
        newest = newest_backup(backups)
        last_error = self._standing_error(newest)
        if not self.automatic:
            report: dict[str, Any] = {"status": HEALTHY, "enabled": False}
            report["mode"] = self.service.mode
            if last_error is not None:
                report.update(status=DEGRADED, error=last_error)
            return report
        report = {
            "status": HEALTHY,
            "enabled": True,
            "mode": self.service.mode,
            "count": len(backups),
            "last_backup_at": newest.created_at.isoformat() if newest else None,
            "age_seconds": None,
        }
        if newest is not None:
            age = datetime.now(UTC) - newest.created_at
            report["age_seconds"] = round(age.total_seconds(), 1)
            interval = self.interval
            if interval is not None and age > 2 * interval:
                report.update(status=DEGRADED, error="the newest backup is overdue")
        future = backups[0] if backups and backups[0] is not newest else None
        if future is not None:
            report.update(
                status=DEGRADED,
                error=f"{future.name} is dated in the future: was the clock ahead? (it is "
                "not counted as the newest backup; delete it if it is not needed)",
            )
        if last_error is not None:
            report.update(status=DEGRADED, error=last_error)
        return report


def _attempted_at(state: dict[str, Any]) -> datetime:
    """When an attempt's state was recorded (the distant past when that cannot be read)."""
    try:
        at = datetime.fromisoformat(state["at"])
    except (KeyError, TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def public_reason(exc: BackupError | OSError) -> str:
    """Why a backup failed, as the public /health and the answer to `POST /backup` show it:
    an OS error's words without the file name it carries (the log has the whole error)."""
    cause = exc.__cause__ if isinstance(exc, BackupError) else exc
    if isinstance(cause, OSError):
        return f"the backup failed: {cause.strerror or type(cause).__name__}"
    return exc.message if isinstance(exc, BackupError) else str(exc)
