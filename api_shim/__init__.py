"""The thin producer: the HTTP API that records and enqueues jobs."""
