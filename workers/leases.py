"""A process's lease in the ledger, and the reconciler that acts on expired ones.

Every process that runs attempts (a gevent worker; each prefork child) holds a lease and
renews it from a thread of its own (a greenlet under gevent) every sixth of
``CONVEYOR_WORKER_LEASE_SECONDS``. The reconciler runs in every worker's relay loop (and
beat's): it closes the open attempts of dead processes as lost and puts their jobs back
(:mod:`workers.ledger.reconciliation`). A prefork main process also ends the lease of a
child it saw die, so that child's job comes back within a second or two.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from workers.ledger import reconciliation
from workers.ledger.reconciliation import Lease, LostAttempt, Reconciled

logger = logging.getLogger(__name__)

# renewals per lease term: a process survives five missed renewals in a row
_RENEWALS_PER_TERM = 6


def _now() -> datetime:
    return datetime.now(UTC)


def new_instance_id() -> str:
    """A random id for one start of a worker; its processes' leases begin with it."""
    return uuid.uuid4().hex[:16]


def lease_id_of(instance: str, pid: int) -> str:
    """The lease id of process ``pid`` of worker start ``instance``."""
    return f"{instance}-{pid}"


class LeaseKeeper:
    """Holds one process's lease: renews it until stopped, then releases it.

    It also puts back the attempts this process gave up on (killed, or whose outcome it
    could not record while the ledger was down) once the ledger answers again, and the
    attempts a claim may have opened for a job whose delivery was killed while the claim
    was on its way.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        lease: Lease,
        settle: Callable[[LostAttempt], str] | None = None,
        *,
        running_here: Callable[[str], bool] = lambda _job_id: False,
    ) -> None:
        """``settle`` closes a lost attempt and puts its job back; ``running_here(job_id)``:
        whether a delivery in this process runs the job now."""
        self._engine = engine
        self.lease = lease
        self._settle = settle
        self._running_here = running_here
        self._abandoned: list[LostAttempt] = []
        self._unsure_claims: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        """Seconds between renewals."""
        return self.lease.ttl.total_seconds() / _RENEWALS_PER_TERM

    def renew(self) -> bool:
        """Renew the lease now (and put back abandoned attempts); whether the ledger took it."""
        try:
            with self._engine().begin() as connection:
                reconciliation.renew(connection, self.lease, _now())
            self._put_back_abandoned()
        except SQLAlchemyError as error:
            logger.warning("lease not renewed", extra={"reason": str(error)[:200]})
            return False
        return True

    def abandon(self, job_id: str, attempt: int) -> None:
        """Note an attempt whose outcome could not be recorded; it is put back later."""
        with self._lock:
            self._abandoned.append(LostAttempt(job_id, attempt))

    def abandon_claim(self, job_id: str) -> None:
        """Note a claim of ``job_id`` whose caller was killed before it learnt whether the
        ledger took it; an attempt it opened under this lease is put back later."""
        with self._lock:
            self._unsure_claims.append(job_id)

    def start(self) -> None:
        """Renew the lease once now, then in the background."""
        self.renew()
        self._thread = threading.Thread(target=self._run, name="worker-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and release the lease (its process has no attempt left open)."""
        self._stop.set()
        try:
            with self._engine().begin() as connection:
                reconciliation.release(connection, self.lease.id)
        except SQLAlchemyError as error:
            logger.warning("lease not released", extra={"reason": str(error)[:200]})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.renew()

    def _put_back_abandoned(self) -> None:
        self._resolve_unsure_claims()
        with self._lock:
            abandoned, self._abandoned = self._abandoned, []
        waiting: list[LostAttempt] = []
        try:
            for lost in abandoned:
                done = self._settle(lost) if self._settle else "closed"
                if done == "skipped":  # held by a delivery right now: next renewal
                    waiting.append(lost)
        except SQLAlchemyError:
            waiting = abandoned
            raise
        finally:
            with self._lock:
                self._abandoned[:0] = waiting

    def _resolve_unsure_claims(self) -> None:
        """Turn each unsure claim into the attempts it opened that nobody here runs."""
        with self._lock:
            unsure, self._unsure_claims = self._unsure_claims, []
        later: list[str] = []
        try:
            while unsure:
                job_id = unsure[-1]
                if self._running_here(job_id):  # a later delivery runs it: ask again later
                    later.append(job_id)
                else:
                    with self._engine().connect() as connection:
                        opened = reconciliation.open_attempts_under(
                            connection, job_id, self.lease.id
                        )
                    with self._lock:
                        self._abandoned.extend(opened)
                unsure.pop()
        finally:
            with self._lock:
                self._unsure_claims[:0] = unsure + later


class Reconciler:
    """Puts back the jobs of processes whose lease expired."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        lease_term: timedelta,
        *,
        poison_after: int,
        poison_error: Callable[[], dict[str, Any]],
        on_poisoned: Callable[[str, dict[str, Any]], None] = lambda _job, _error: None,
    ) -> None:
        self._engine = engine
        self._lease_term = lease_term
        self._poison_after = poison_after
        self._poison_error = poison_error
        self._on_poisoned = on_poisoned
        self._runs = 0

    def run(self) -> Reconciled:
        """One pass; a ledger failure is logged, not raised."""
        counts = {"put_back": 0, "poisoned": 0, "closed": 0, "skipped": 0}
        try:
            engine = self._engine()
            now = _now()
            with engine.connect() as connection:
                lost = reconciliation.lost_attempts(connection, now, self._lease_term)
            for attempt in lost:
                counts[self.settle(attempt)] += 1
            self._runs += 1
            if self._runs % 600 == 1:
                with engine.begin() as connection:
                    reconciliation.delete_old_leases(connection, now)
        except SQLAlchemyError as error:
            logger.warning("reconciler could not run", extra={"reason": str(error)[:200]})
        return Reconciled(counts["put_back"], counts["poisoned"], counts["closed"])

    def settle(self, attempt: LostAttempt) -> str:
        """Close one lost attempt and put its job back (or fail it as poison); what was done
        (see :func:`workers.ledger.reconciliation.put_back`). Raises on a ledger failure."""
        error = self._poison_error()
        with self._engine().begin() as connection:
            done = reconciliation.put_back(
                connection,
                attempt,
                now=_now(),
                poison_after=self._poison_after,
                poison_error=error,
            )
        self._log(done, attempt, error)
        if done == "poisoned":
            self._on_poisoned(attempt.job_id, error)
        return done

    @staticmethod
    def _log(done: str, attempt: LostAttempt, error: dict[str, Any]) -> None:
        extra = {"job_id": attempt.job_id, "attempt": attempt.number}
        if done == "put_back":
            logger.warning("job put back: its attempt was lost", extra=extra)
        elif done == "poisoned":
            logger.error(
                "job failed as poison: its worker died during too many attempts",
                extra={**extra, "error_id": error.get("error_id")},
            )


class ChildLeaseWatch:
    """In a prefork main process: ends the lease of every child of this worker that is gone."""

    def __init__(self, engine: Callable[[], Engine], instance: str) -> None:
        self._engine = engine
        self._instance = instance

    def check(self, children: list[int]) -> None:
        """``children``: the pids of the pool's processes now (a child is listed from its
        fork, before it takes its lease)."""
        try:
            with self._engine().begin() as connection:
                ended = reconciliation.expire_gone_children(
                    connection, f"{self._instance}-", children, _now()
                )
        except SQLAlchemyError as error:
            logger.warning("dead children's leases not ended", extra={"reason": str(error)[:200]})
            return
        if ended:
            logger.warning("ended the leases of %d pool processes that died", ended)


def this_process_lease(instance: str, worker: str, pool: str, ttl: timedelta) -> Lease:
    """The lease of the calling process."""
    pid = os.getpid()
    return Lease(lease_id_of(instance, pid), worker, pool, pid, ttl)
