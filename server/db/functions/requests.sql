-- A definite answer is final for its request_id (every state-changing RPC carries one).
--
-- A caller's request_ids are one namespace: a key (initiator, request_id) ends up with exactly one
-- answer, kept in the table its outcome belongs to: a transfer (transfers), a post or void
-- (transfer_resolutions), a chat message (messages.request_id), or a refusal (request_refusals).
-- Every function that answers a key looks in all four before it decides.
-- Every function that decides a request's answer first takes that key's transaction lock, so
-- concurrent copies of one request are decided one after the other, each seeing what the first
-- committed: all get the same answer. Lock order, everywhere: request keys (sorted), then rooms,
-- then payment requests, then accounts (user_id NULLS FIRST, currency), then transfer rows.
--
-- A refusal that depends on the state of things (insufficient funds, not found, not pending, ...)
-- is recorded with the request's fingerprint (what was asked, as jsonb text; times as epoch seconds,
-- so no session setting changes it), so a retry gets the same refusal whatever happened since and
-- the same id with another body is IDEMPOTENCY_KEY_REUSED.
-- INVALID_ARGUMENT outcomes are not recorded: they follow from the request alone.

CREATE OR REPLACE FUNCTION request_lock(p_initiator uuid[], p_request uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(k.key)
    FROM (SELECT DISTINCT hashtextextended('request:' || x.ini || ':' || x.req, 0) AS key
          FROM unnest(p_initiator, p_request) AS x(ini, req)) k
    ORDER BY k.key;
END $$;

-- The recorded refusal of this request (outcome and the state it named), IDEMPOTENCY_KEY_REUSED
-- when the id was refused for another request, or NULLs when the id was never refused.
CREATE OR REPLACE FUNCTION request_prior_refusal(
    p_initiator uuid, p_request uuid, p_fingerprint text, OUT outcome text, OUT state text
) LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    SELECT CASE WHEN r.fingerprint = p_fingerprint THEN r.outcome ELSE 'IDEMPOTENCY_KEY_REUSED' END,
           CASE WHEN r.fingerprint = p_fingerprint THEN r.state END
    INTO outcome, state
    FROM request_refusals r WHERE r.initiator_id = p_initiator AND r.request_id = p_request;
END $$;

-- Record a refusal; the caller holds the key's lock and has checked there is no answer yet.
CREATE OR REPLACE FUNCTION request_refuse(
    p_initiator uuid, p_request uuid, p_fingerprint text, p_outcome text, p_state text DEFAULT NULL
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO request_refusals (initiator_id, request_id, fingerprint, outcome, state)
    VALUES (p_initiator, p_request, p_fingerprint, p_outcome, p_state)
$$;

-- Whether chat already answered this key (a payment, a payment request or a response to one:
-- each wrote a message with it).
CREATE OR REPLACE FUNCTION request_used_by_chat(p_initiator uuid, p_request uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM messages m WHERE m.sender_id = p_initiator AND m.request_id = p_request)
$$;

-- Whether the ledger already answered this key (a transfer or a post/void was made with it).
CREATE OR REPLACE FUNCTION request_used_by_ledger(p_initiator uuid, p_request uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM transfers t WHERE t.initiator_id = p_initiator AND t.request_id = p_request)
        OR EXISTS (SELECT 1 FROM transfer_resolutions r
                   WHERE r.initiator_id = p_initiator AND r.request_id = p_request)
$$;
