"""Reading the ledger from tests: a job with its attempts, fresh from the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.support.polling import wait_for
from workers.ledger.models import Attempt, Job, JobStatus


@dataclass(frozen=True)
class AttemptView:
    number: int
    outcome: str
    pool: str
    worker: str
    pid: int
    started_at: datetime
    finished_at: datetime | None
    retry_delay_seconds: float | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class JobView:
    id: str
    task: str
    status: str
    attempts: int
    max_attempts: int
    result: Any
    error: dict[str, Any] | None
    history: list[AttemptView]

    @property
    def outcomes(self) -> list[str]:
        return [attempt.outcome for attempt in self.history]


class LedgerReader:
    """Reads jobs as the workers left them."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def job(self, job_id: str) -> JobView | None:
        with self._sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            attempts = session.scalars(
                select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)
            ).all()
            return JobView(
                id=job.id,
                task=job.task,
                status=job.status,
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                result=job.result,
                error=job.error,
                history=[
                    AttemptView(
                        number=a.number,
                        outcome=a.outcome,
                        pool=a.pool,
                        worker=a.worker,
                        pid=a.pid,
                        started_at=a.started_at,
                        finished_at=a.finished_at,
                        retry_delay_seconds=a.retry_delay_seconds,
                        error=a.error,
                    )
                    for a in attempts
                ],
            )

    def wait_finished(self, job_id: str, timeout: float = 60) -> JobView:
        """The job once it is succeeded, failed or cancelled."""

        def finished() -> JobView | None:
            job = self.job(job_id)
            return job if job and JobStatus(job.status).finished else None

        return wait_for(finished, timeout=timeout, what=f"job {job_id} to finish")
