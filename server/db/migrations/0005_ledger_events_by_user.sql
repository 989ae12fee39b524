-- A WatchTransfers catch-up reads the watcher's own events from its cursor on (server/ledger/watch.py):
-- one index range a side, so a resume costs what that user's history holds, not the whole log's.
-- IF NOT EXISTS: on a large ledger an operator builds them CONCURRENTLY first (README, Migrations).
CREATE INDEX IF NOT EXISTS ledger_events_from_user_idx ON ledger_events (from_user_id, xid, seq);
CREATE INDEX IF NOT EXISTS ledger_events_to_user_idx ON ledger_events (to_user_id, xid, seq);
