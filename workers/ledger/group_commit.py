"""Group commit: the common attempt transitions of many concurrent jobs in one round trip.

A gevent worker runs dozens of jobs at once, and each would otherwise spend a round trip
and a commit (a WAL flush) on its claim and another on its success. Here every claim and
every success waiting at a moment is written together by one flusher, in one statement:
one round trip and one commit for the round. The caller
waits for the flush that carries its transition before it runs the job or acknowledges the
message, so nothing runs unclaimed and nothing is acknowledged that the ledger does not have.

Only the common cases are batched (a queued or retrying job claimed, a job sent by a plain
Celery client adopted; a running attempt's success). A delivery the round did not start, and
a success it did not record, come back as ``None`` and ``False``: the caller takes the
one-at-a-time path, which handles every other case. PostgreSQL only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Engine

from workers.ledger.attempts import AttemptStart, Delivery, Runner, Verdict
from workers.ledger.models import ATTEMPTS, JOBS, AttemptOutcome, JobStatus

logger = logging.getLogger(__name__)

#: Transitions written in one flush at most; more wait for the next.
MAX_BATCH = 500

_RUNNING = JobStatus.RUNNING.value
# One statement, so one round trip and one commit in autocommit: the starts of the round (a
# queued or retrying job of this task and a current delivery is claimed; a job the ledger has
# never seen, sent by a plain Celery client, is adopted as running its first attempt; either
# way with its attempt row opened) and its successes (a running job's current attempt). An
# attempt is closed only while open: one the reconciler closed as lost stays lost; it is
# closed as cancelled when its job was cancelled while it ran. A job is never in two parts:
# a claim needs it queued or retrying, an adoption needs it absent, a success needs it
# running.
ROUND = f"""
WITH delivered AS (
    SELECT * FROM jsonb_to_recordset(%(claims)s)
        AS d(id text, task text, generation int, worker text, pool text, pid int, lease text,
             queue text, args jsonb, max_attempts int)
), claimed AS (
    UPDATE {JOBS.name} AS j
    SET status = '{_RUNNING}', attempts = j.attempts + 1,
        started_at = coalesce(j.started_at, %(now)s), next_retry_at = NULL, updated_at = %(now)s
    FROM delivered AS d
    WHERE j.id = ANY(%(claim_ids)s) AND j.id = d.id AND j.task = d.task
      AND j.status IN ('{JobStatus.QUEUED.value}', '{JobStatus.RETRYING.value}')
      AND j.retry_generation <= d.generation
    RETURNING j.id, j.attempts, j.attempt_base, j.request_id,
              d.worker, d.pool, d.pid, d.lease
), adopted AS (
    INSERT INTO {JOBS.name} (id, client_id, task, queue, status, args, priority, attempts,
        max_attempts, retry_generation, attempt_base, request_id, created_at, updated_at,
        started_at)
    SELECT DISTINCT ON (d.id) d.id, NULL, d.task, d.queue, '{_RUNNING}', d.args, 'normal', 1,
        d.max_attempts, 0, 0, NULL, %(now)s, %(now)s, %(now)s
    FROM delivered AS d
    WHERE NOT EXISTS (SELECT FROM {JOBS.name} AS j WHERE j.id = d.id)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, attempts, attempt_base, request_id
), started AS (
    SELECT c.id, c.attempts, c.attempt_base, c.request_id, c.worker, c.pool, c.pid, c.lease
    FROM claimed AS c
    UNION ALL
    SELECT a.id, a.attempts, a.attempt_base, a.request_id, d.worker, d.pool, d.pid, d.lease
    FROM adopted AS a
    JOIN (SELECT DISTINCT ON (id) * FROM delivered) AS d ON d.id = a.id
), opened AS (
    INSERT INTO {ATTEMPTS.name} (job_id, number, worker, pool, pid, lease, outcome, started_at)
    SELECT id, attempts, worker, pool, pid, lease, '{AttemptOutcome.RUNNING.value}', %(now)s
    FROM started
), done AS (
    SELECT * FROM jsonb_to_recordset(%(successes)s) AS d(id text, attempt int, result jsonb)
), moved AS (
    UPDATE {JOBS.name} AS j
    SET status = '{JobStatus.SUCCEEDED.value}', result = d.result, error = NULL,
        finished_at = %(now)s, updated_at = %(now)s
    FROM done AS d
    WHERE j.id = ANY(%(success_ids)s) AND j.id = d.id
      AND j.status = '{_RUNNING}' AND j.attempts = d.attempt
    RETURNING j.id
), closed AS (
    UPDATE {ATTEMPTS.name} AS a
    SET outcome = CASE WHEN a.job_id IN (SELECT id FROM moved)
                       THEN '{AttemptOutcome.SUCCEEDED.value}'
                       ELSE '{AttemptOutcome.CANCELLED.value}' END,
        error = NULL, finished_at = %(now)s
    FROM done AS d
    WHERE a.job_id = ANY(%(success_ids)s) AND a.job_id = d.id AND a.number = d.attempt
      -- "IN (…, '')" is "= 'running'" (no outcome is empty), worded so that the partial
      -- index of open attempts cannot serve it: that index keeps an entry for every attempt
      -- closed since the last vacuum, and a bitmap scan of it (chosen while it looked
      -- small) read 15,000 of them to close five attempts
      AND a.outcome IN ('{AttemptOutcome.RUNNING.value}', '')
)
SELECT true, id, attempts, attempt_base, request_id FROM started
UNION ALL
SELECT false, id, NULL, NULL, NULL FROM moved
"""  # noqa: S608 - built from the schema's own names and statuses, no input


@dataclass
class _Waiter:
    """One transition waiting for its flush; ``answer`` is set before ``done``."""

    record: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    answer: Any = None
    error: BaseException | None = None
    forsaken: bool = False  # the caller stopped waiting (killed) before the answer came

    def settle(self, answer: Any = None, error: BaseException | None = None) -> None:
        self.answer, self.error = answer, error
        self.done.set()

    def wait(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.answer


def _now() -> datetime:
    return datetime.now(UTC)


class GroupCommit:
    """Claims and successes of one process's concurrent jobs, flushed together.

    Under gevent's monkey patching the flusher thread is a greenlet and its events are
    cooperative; the flusher holds one pooled connection of ``engine`` while it writes.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        clock: Callable[[], datetime] = _now,
        *,
        on_forsaken_start: Callable[[str, int], None] = lambda _job, _attempt: None,
    ) -> None:
        """``on_forsaken_start(job_id, attempt)``: an attempt the round opened for a caller
        that no longer waited for it (killed meanwhile); nobody runs it, so this process must
        put it back."""
        self._engine = engine
        self._clock = clock
        self._on_forsaken_start = on_forsaken_start
        # orders a killed caller's leaving against its round's answer
        self._answering = threading.Lock()
        self._claims: SimpleQueue[_Waiter] = SimpleQueue()
        self._successes: SimpleQueue[_Waiter] = SimpleQueue()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._lock = threading.Lock()
        self.flushes = 0  # rounds written, for the benchmarks and tests
        self.transitions = 0

    def claim(self, delivery: Delivery, *, generation: int, runner: Runner) -> AttemptStart | None:
        """Claim a queued or retrying job for this delivery, or adopt a job the ledger has
        never seen; ``None`` if the round could do neither (the one-at-a-time path decides)."""
        waiter = _Waiter({
            "id": delivery.job_id, "task": delivery.task, "generation": generation,
            "worker": runner.worker, "pool": runner.pool, "pid": runner.pid,
            "lease": runner.lease, "queue": delivery.queue, "args": delivery.args,
            "max_attempts": delivery.max_attempts,
        })  # fmt: skip
        self._submit(self._claims, waiter)
        try:
            answer: AttemptStart | None = waiter.wait()
        except BaseException:
            # killed while the round was on its way (Celery ends a gevent task when the
            # broker connection drops): the round may still open the attempt, under this
            # process's live lease, for a job nobody will run
            with self._answering:
                waiter.forsaken = not waiter.done.is_set()
            if not waiter.forsaken:  # answered just before the caller was killed
                self._hand_back(waiter)
            raise
        return answer

    def _hand_back(self, waiter: _Waiter) -> None:
        """Give an attempt opened for a claim whose caller is gone to ``on_forsaken_start``."""
        if isinstance(waiter.answer, AttemptStart):
            self._on_forsaken_start(waiter.record["id"], waiter.answer.attempt)

    def succeed(self, job_id: str, attempt: int, result: Any) -> bool:
        """Record attempt ``attempt`` of a running job as succeeded; whether the job moved.

        ``False``: the job no longer ran that attempt (cancelled, or closed as lost).
        """
        waiter = _Waiter({"id": job_id, "attempt": attempt, "result": result})
        self._submit(self._successes, waiter)
        return bool(waiter.wait())

    def _submit(self, queue: SimpleQueue[_Waiter], waiter: _Waiter) -> None:
        queue.put(waiter)
        self._ensure_flusher()
        self._wake.set()

    def _ensure_flusher(self) -> None:
        if self._flusher is not None and self._flusher.is_alive():
            return
        with self._lock:
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(
                    target=self._run, name="ledger-group-commit", daemon=True
                )
                self._flusher.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                claims = _take(self._claims)
                successes = _take(self._successes)
                if not claims and not successes:
                    break
                self._flush(claims, successes)

    def _flush(self, claims: list[_Waiter], successes: list[_Waiter]) -> None:
        """Write one round and answer its waiters; every waiter is answered, whatever fails."""
        try:
            claimed, moved = self._write(claims, successes)
            answers: list[AttemptStart | bool | None] = [
                _claim_answer(claimed.pop(w.record["id"], None)) for w in claims
            ]
            answers += [w.record["id"] in moved for w in successes]
        except BaseException as error:  # every waiter of the round gets the error
            for waiter in claims + successes:
                waiter.settle(error=error)
            if not isinstance(error, Exception):
                raise
            return
        self.flushes += 1
        self.transitions += len(answers)
        with self._answering:
            for waiter, answer in zip(claims + successes, answers, strict=True):
                waiter.settle(answer)
            forsaken = [waiter for waiter in claims if waiter.forsaken]
        for waiter in forsaken:
            self._hand_back(waiter)

    def _write(
        self, claims: list[_Waiter], successes: list[_Waiter]
    ) -> tuple[dict[str, Any], set[str]]:
        """The round's statement; the rows claimed by job id, and the jobs that succeeded."""
        # rows locked in key order, so two processes' rounds cannot deadlock on each other
        claim_rows = sorted((w.record for w in claims), key=lambda r: str(r["id"]))
        success_rows = sorted((w.record for w in successes), key=lambda r: str(r["id"]))
        parameters = {
            "claims": Jsonb(claim_rows),
            "successes": Jsonb(success_rows),
            # the keys again as arrays: the planner sizes an array, not a recordset (it
            # guesses 100 rows), and so finds the rows by index, not by scanning the table
            "claim_ids": [r["id"] for r in claim_rows],
            "success_ids": [r["id"] for r in success_rows],
            "now": self._clock(),
        }
        with self._engine().connect() as connection:
            rows = connection.exec_driver_sql(ROUND, parameters).all()
        claimed = {row.id: row for row in rows if row[0]}
        moved = {row.id for row in rows if not row[0]}
        return claimed, moved


def _claim_answer(row: Any) -> AttemptStart | None:
    """The start of a claimed job; ``None`` when the round did not claim it (or claimed it
    for an earlier delivery of the same job in the round)."""
    if row is None:
        return None
    return AttemptStart(
        Verdict.RUN,
        int(row.attempts),
        row.request_id,
        attempt_in_round=int(row.attempts) - int(row.attempt_base),
    )


def _take(queue: SimpleQueue[_Waiter]) -> list[_Waiter]:
    """What waits in ``queue`` now, up to a batch."""
    taken: list[_Waiter] = []
    while len(taken) < MAX_BATCH:
        try:
            taken.append(queue.get_nowait())
        except Empty:
            break
    return taken
