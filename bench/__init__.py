"""Benchmarks (`.venv/bin/python -m bench.ledger_bench` and the others in bench/README.md); not tests."""

import os

# Set before any benchmark imports grpc. A benchmark forks only to exec (pg_ctl, pgbench, its load
# generators); with gRPC's fork handlers on, a fork while its threads are busy (pg_ctl stop after a
# run over several connections) can abort the child before it execs, and PostgreSQL is then killed
# instead of stopped. The server sets the same for the same reason (server/__main__.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
