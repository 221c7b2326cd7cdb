"""I/O concurrency: 1,000 jobs each waiting 1 s on a local HTTP server, a Conveyor io worker
at concurrency 500 against a plain Celery gevent worker at -c 500 with the same HTTP client.

The webhook fan-out (``bench/webhook_fanout.py``) at these sizes: every job is a
``webhooks.deliver`` to ``bench/receiver.py``, which holds each request 1 s and takes 1,000
connections at once; the plain task posts the same bytes through the same client. Floor:
1,000 x 1 s / 500 = 2 s. Target: Conveyor's drain at most 1.2x plain Celery's.

    .venv/bin/python bench/io_concurrency.py --jobs 1000 --delay 1 --concurrency 500
"""

from __future__ import annotations

from webhook_fanout import Fanout, main_for

IO_CONCURRENCY = Fanout("io_concurrency", 1.2, jobs=1000, delay=1.0, concurrency=500, repeat=2)

if __name__ == "__main__":
    main_for(IO_CONCURRENCY, __doc__ or "")
