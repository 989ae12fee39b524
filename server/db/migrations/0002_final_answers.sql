-- Definite answers are final for their request_id, and expiries are bounded.

-- Refusals that depend on the state of things, kept so a retry of the request gets the same one
-- (server/db/functions/requests.sql). Append-only, like the ledger.
CREATE TABLE request_refusals (
    initiator_id uuid NOT NULL,
    request_id   uuid NOT NULL,
    -- What was asked (the operation and its fields, as jsonb text): a retry from a reuse.
    fingerprint  text NOT NULL,
    outcome      text NOT NULL,
    -- The state a refusal named (TRANSFER_NOT_PENDING, PAYMENT_REQUEST_CLOSED), if any.
    state        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (initiator_id, request_id)
);
CREATE TRIGGER request_refusals_refuse_change BEFORE UPDATE OR DELETE ON request_refusals
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- An expiry was unbounded: the largest valid protobuf Timestamp was stored as 'infinity' (the
-- hold never expired, and reading it back failed). Expiries are now at most 365 days ahead
-- (server/validation.py); rows stored before are brought within that bound of their creation.
-- The transfer guard forbids changing a settled transfer; the bound applies to its history too
-- (WatchTransfers replays its pending event), so the guard steps aside for this one statement.
ALTER TABLE transfers DISABLE TRIGGER transfers_guard_update;
UPDATE transfers SET expires_at = created_at + interval '365 days'
WHERE expires_at > created_at + interval '365 days';
ALTER TABLE transfers ENABLE TRIGGER transfers_guard_update;
UPDATE payment_requests SET expire_at = created_at + interval '365 days'
WHERE expire_at > created_at + interval '365 days';
-- A day of slack over the servers' bound, for clock skew between a server and the database.
ALTER TABLE transfers ADD CONSTRAINT transfers_expiry_bounded
    CHECK (expires_at IS NULL OR expires_at <= created_at + interval '366 days');
ALTER TABLE payment_requests ADD CONSTRAINT payment_requests_expiry_bounded
    CHECK (expire_at IS NULL OR expire_at <= created_at + interval '366 days');

-- Functions whose arguments changed (server/db/functions/ creates the new ones).
DROP FUNCTION IF EXISTS ledger_create_transfers(
    uuid[], uuid[], text[], boolean[], uuid[], uuid[], text[], text[], bigint[], text[], timestamptz[]);
DROP FUNCTION IF EXISTS chat_transfer(uuid, uuid, uuid, text, bigint, text);
DROP FUNCTION IF EXISTS ledger_resolve_pending(uuid, uuid, uuid, text, bigint);  -- now returns a transfers row

-- Written but never read since ListRooms pages by snapshot.
ALTER TABLE rooms DROP COLUMN last_activity_at;
