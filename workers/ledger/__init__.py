"""The job ledger: the durable record of every job and every attempt."""
