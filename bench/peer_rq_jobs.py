"""The RQ side of the peers' drain: one no-op job function, found by ``rq`` workers by its
dotted path, ``bench.peer_rq_jobs.noop``."""

from __future__ import annotations

from completion_counter import count_one
from rq import get_current_job

QUEUE = "peers"


def noop() -> None:
    job = get_current_job()
    assert job is not None, "run by an rq worker only"
    count_one(job.connection)
