"""Conveyor's worker runtime: settings, the Celery app factory, the job ledger and worker boot."""
