-- Payments in chat: the ledger transfer and the message that shows it, committed together.
--
-- Each function first takes its request key's lock (server/db/functions/requests.sql), then the
-- room, then the payment request, then (inside ledger_create_transfers) the accounts. Outcomes are
-- words, as in the ledger: CREATED, REPLAYED, IDEMPOTENCY_KEY_REUSED, ROOM_NOT_FOUND,
-- MEMBER_NOT_FOUND, plus the ledger's INSUFFICIENT_FUNDS / RECIPIENT_NOT_FOUND / SELF_TRANSFER,
-- and for requests REQUEST_NOT_FOUND, WRONG_PARTY, PAYMENT_REQUEST_CLOSED, PAYMENT_REQUEST_EXPIRED.
-- Every refusal but SELF_TRANSFER is recorded with the function's own fingerprint of the request,
-- so a retry gets it again whatever happened since.

-- One immediate user-to-user transfer through the ledger, inside the caller's transaction, its
-- refusals recorded under the chat request's fingerprint. A REPLAYED transfer that the chat did
-- not write (the request_id was used with the ledger directly) counts as a reused key.
CREATE OR REPLACE FUNCTION chat_transfer(
    p_request uuid, p_from uuid, p_to uuid, p_currency text, p_amount bigint, p_memo text, p_fingerprint text,
    OUT outcome text, OUT transfer_id uuid
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.outcome, (c.transfer).id INTO outcome, transfer_id
    FROM ledger_create_transfers(
        ARRAY[p_from], ARRAY[p_request], ARRAY['transfer'], ARRAY[false], ARRAY[p_from], ARRAY[NULL::text],
        ARRAY[p_to], ARRAY[NULL::text], ARRAY[p_currency], ARRAY[p_amount], ARRAY[p_memo],
        ARRAY[NULL::timestamptz], ARRAY[p_fingerprint]) c;
    IF outcome = 'REPLAYED' THEN
        outcome := 'IDEMPOTENCY_KEY_REUSED';
    END IF;
END
$$;

-- The answer a chat request already has: REPLAYED (p_replay says whether the message found is
-- this request's), IDEMPOTENCY_KEY_REUSED, a recorded refusal, or NULL when it has none yet. With
-- p_room, a request with no answer yet then locks the room of its two parties (chat_lock_parties),
-- or is refused. The caller holds the key's lock.
CREATE OR REPLACE FUNCTION chat_prior_answer(
    p_sender uuid, p_request uuid, p_fingerprint text, p_replay boolean, p_message messages,
    p_room uuid DEFAULT NULL, p_other uuid DEFAULT NULL,
    OUT outcome text, OUT state text
) LANGUAGE plpgsql AS $$
BEGIN
    IF p_message.sequence IS NOT NULL THEN
        outcome := CASE WHEN p_replay THEN 'REPLAYED' ELSE 'IDEMPOTENCY_KEY_REUSED' END;
    ELSIF request_used_by_ledger(p_sender, p_request) THEN
        outcome := 'IDEMPOTENCY_KEY_REUSED';
    ELSE
        SELECT r.outcome, r.state INTO outcome, state FROM request_prior_refusal(p_sender, p_request, p_fingerprint) r;
        IF outcome IS NULL AND p_room IS NOT NULL THEN
            outcome := chat_lock_parties(p_room, p_sender, p_other, p_request, p_fingerprint);
        END IF;
    END IF;
END
$$;

-- Locks the room when both the caller and the other party are members of it; otherwise records and
-- returns the refusal (ROOM_NOT_FOUND for the caller, MEMBER_NOT_FOUND for the other party).
CREATE OR REPLACE FUNCTION chat_lock_parties(
    p_room uuid, p_caller uuid, p_other uuid, p_request uuid, p_fingerprint text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_outcome text;
BEGIN
    IF NOT chat_lock_room_of_member(p_room, p_caller) THEN
        v_outcome := 'ROOM_NOT_FOUND';
    ELSIF NOT EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = p_room AND m.user_id = p_other) THEN
        v_outcome := 'MEMBER_NOT_FOUND';
    ELSE
        RETURN NULL;
    END IF;
    PERFORM request_refuse(p_caller, p_request, p_fingerprint, v_outcome);
    RETURN v_outcome;
END
$$;

-- SendPayment: the transfer and the PAYMENT message, both or neither.
CREATE OR REPLACE FUNCTION chat_send_payment(
    p_room uuid, p_payer uuid, p_request uuid, p_recipient uuid, p_currency text, p_amount bigint, p_note text,
    OUT outcome text, OUT room_id uuid, OUT sequence bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_message  messages;
    v_transfer uuid;
    v_fp       text := jsonb_build_array('send_payment', p_room, p_recipient, p_currency, p_amount, p_note)::text;
BEGIN
    PERFORM request_lock(ARRAY[p_payer], ARRAY[p_request]);
    SELECT * INTO v_message FROM messages m WHERE m.sender_id = p_payer AND m.request_id = p_request;
    SELECT a.outcome, v_message.room_id, v_message.sequence INTO outcome, room_id, sequence
    FROM chat_prior_answer(p_payer, p_request, v_fp,
        v_message.kind = 'payment' AND v_message.room_id = p_room AND v_message.note = p_note
        AND EXISTS (SELECT 1 FROM transfers t WHERE t.id = v_message.transfer_id
                    AND t.to_user_id = p_recipient AND t.currency = p_currency AND t.amount = p_amount),
        v_message, p_room, p_recipient) a;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT t.outcome, t.transfer_id INTO outcome, v_transfer
    FROM chat_transfer(p_request, p_payer, p_recipient, p_currency, p_amount, p_note, v_fp) t;
    IF outcome <> 'CREATED' THEN
        RETURN;  -- the ledger wrote nothing but its refusal, so neither do we
    END IF;
    v_message := chat_append(
        p_room, p_payer, NULL, 'payment',
        'Paid ' || chat_money(p_amount, p_currency) || CASE WHEN p_note <> '' THEN ': ' || p_note ELSE '' END,
        v_transfer, p_note, NULL, NULL, p_request);
    room_id := v_message.room_id;
    sequence := v_message.sequence;
END
$$;

-- RequestPayment: the request and its OPEN message.
CREATE OR REPLACE FUNCTION chat_request_payment(
    p_room uuid, p_requester uuid, p_request uuid, p_payer uuid, p_currency text, p_amount bigint,
    p_note text, p_expire timestamptz,
    OUT outcome text, OUT room_id uuid, OUT sequence bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_message messages;
    v_pr      payment_requests;
    v_fp      text := jsonb_build_array(
        'request_payment', p_room, p_payer, p_currency, p_amount, p_note, extract(epoch FROM p_expire))::text;
BEGIN
    PERFORM request_lock(ARRAY[p_requester], ARRAY[p_request]);
    SELECT * INTO v_message FROM messages m WHERE m.sender_id = p_requester AND m.request_id = p_request;
    SELECT * INTO v_pr FROM payment_requests r WHERE r.id = v_message.payment_request_id;
    SELECT a.outcome, v_message.room_id, v_message.sequence INTO outcome, room_id, sequence
    FROM chat_prior_answer(p_requester, p_request, v_fp,
        v_message.request_state = 'open'
        AND (v_pr.room_id, v_pr.payer_id, v_pr.currency, v_pr.amount_minor, v_pr.note)
            = (p_room, p_payer, p_currency, p_amount, p_note)
        AND v_pr.expire_at IS NOT DISTINCT FROM p_expire,
        v_message, p_room, p_payer) a;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;
    IF p_expire <= now() THEN
        outcome := 'EXPIRY_PASSED';  -- an invalid argument, checked here so a retry gets its answer
        RETURN;
    END IF;
    INSERT INTO payment_requests (request_id, room_id, requester_id, payer_id, currency, amount_minor, note, expire_at)
    VALUES (p_request, p_room, p_requester, p_payer, p_currency, p_amount, p_note, p_expire)
    RETURNING * INTO v_pr;
    v_message := chat_append(
        p_room, p_requester, NULL, 'payment_request',
        'Requested ' || chat_money(p_amount, p_currency) || CASE WHEN p_note <> '' THEN ': ' || p_note ELSE '' END,
        NULL, NULL, v_pr.id, 'open', p_request);
    outcome := 'CREATED';
    room_id := v_message.room_id;
    sequence := v_message.sequence;
END
$$;

-- Records a payment request's new state and posts the message that shows it. The caller holds
-- the room's and the request's locks.
CREATE OR REPLACE FUNCTION chat_close_request(
    p_pr payment_requests, p_state text, p_actor uuid, p_request uuid, p_transfer uuid
) RETURNS messages
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE payment_requests SET state = p_state, transfer_id = p_transfer WHERE id = p_pr.id;
    RETURN chat_append(
        p_pr.room_id, p_actor, NULL, 'payment_request',
        CASE p_state
            WHEN 'paid' THEN 'Paid request for '
            WHEN 'declined' THEN 'Declined request for '
            WHEN 'cancelled' THEN 'Cancelled request for '
            ELSE 'Request expired: '
        END || chat_money(p_pr.amount_minor, p_pr.currency),
        NULL, NULL, p_pr.id, p_state, p_request);
END
$$;

-- RespondToPaymentRequest: accept (pay, atomically with the state change), decline, cancel.
-- An expired request is closed as EXPIRED (that change commits, and room_id and sequence name
-- its message) and the action refused. A request whose requester has left the room can be
-- declined by the payer (or expire), not paid.
CREATE OR REPLACE FUNCTION chat_respond_payment_request(p_actor uuid, p_request uuid, p_pr uuid, p_action text,
    OUT outcome text, OUT room_id uuid, OUT sequence bigint, OUT state text
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_message  messages;
    v_pr       payment_requests;
    v_room     uuid;
    v_transfer uuid;
    v_state    text := CASE p_action WHEN 'accept' THEN 'paid' WHEN 'decline' THEN 'declined' ELSE 'cancelled' END;
    v_fp       text := jsonb_build_array('respond', p_pr, p_action)::text;
BEGIN
    PERFORM request_lock(ARRAY[p_actor], ARRAY[p_request]);
    SELECT * INTO v_message FROM messages m WHERE m.sender_id = p_actor AND m.request_id = p_request;
    SELECT a.outcome, a.state, v_message.room_id, v_message.sequence INTO outcome, state, room_id, sequence
    FROM chat_prior_answer(p_actor, p_request, v_fp,
        v_message.payment_request_id IS NOT DISTINCT FROM p_pr AND v_message.request_state = v_state,
        v_message) a;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT r.room_id INTO v_room FROM payment_requests r WHERE r.id = p_pr;
    IF v_room IS NULL OR NOT chat_lock_room_of_member(v_room, p_actor) THEN
        outcome := 'REQUEST_NOT_FOUND';
        PERFORM request_refuse(p_actor, p_request, v_fp, outcome);
        RETURN;
    END IF;
    SELECT * INTO v_pr FROM payment_requests r WHERE r.id = p_pr FOR UPDATE;
    IF (p_action = 'cancel') <> (p_actor = v_pr.requester_id) OR p_actor NOT IN (v_pr.requester_id, v_pr.payer_id) THEN
        outcome := 'WRONG_PARTY';
    ELSIF v_pr.state = 'open' AND v_pr.expire_at <= now() THEN
        -- The EXPIRED message commits with the refusal; its place is returned for the chat bus.
        v_message := chat_close_request(v_pr, 'expired', NULL, NULL, NULL);
        room_id := v_message.room_id;
        sequence := v_message.sequence;
        outcome := 'PAYMENT_REQUEST_EXPIRED';
        state := 'expired';
    ELSIF v_pr.state <> 'open' THEN
        outcome := CASE WHEN v_pr.state = 'expired' THEN 'PAYMENT_REQUEST_EXPIRED' ELSE 'PAYMENT_REQUEST_CLOSED' END;
        state := v_pr.state;
    ELSIF p_action = 'accept'
          AND NOT EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = v_room AND m.user_id = v_pr.requester_id) THEN
        outcome := 'MEMBER_NOT_FOUND';  -- the requester left: paid only to a member, as SendPayment is
    END IF;
    IF outcome IS NOT NULL THEN
        PERFORM request_refuse(p_actor, p_request, v_fp, outcome, state);
        RETURN;
    END IF;
    IF p_action = 'accept' THEN
        SELECT t.outcome, t.transfer_id INTO outcome, v_transfer
        FROM chat_transfer(p_request, p_actor, v_pr.requester_id, v_pr.currency, v_pr.amount_minor, v_pr.note, v_fp) t;
        IF outcome <> 'CREATED' THEN
            RETURN;
        END IF;
    END IF;
    v_message := chat_close_request(v_pr, v_state, p_actor, p_request, v_transfer);
    outcome := 'CREATED';
    room_id := v_message.room_id;
    sequence := v_message.sequence;
    state := v_state;
END
$$;

-- The sweeper: close up to 100 open requests past their expiry, each with an EXPIRED message whose
-- place it returns (for the chat bus). Safe to run from every replica at once (SKIP LOCKED).
CREATE OR REPLACE FUNCTION chat_expire_due_payment_requests()
RETURNS TABLE (room_id uuid, sequence bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id      uuid;
    v_room    uuid;
    v_pr      payment_requests;
    v_message messages;
BEGIN
    FOR v_id, v_room IN
        SELECT r.id, r.room_id FROM payment_requests r
        WHERE r.state = 'open' AND r.expire_at <= now()
        ORDER BY r.expire_at LIMIT 100
    LOOP
        PERFORM 1 FROM rooms WHERE id = v_room FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO v_pr FROM payment_requests r WHERE r.id = v_id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND OR v_pr.state <> 'open';
        v_message := chat_close_request(v_pr, 'expired', NULL, NULL, NULL);
        room_id := v_message.room_id;
        sequence := v_message.sequence;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The previous release's sweeper (a count), kept so its servers work on during a rolling upgrade.
CREATE OR REPLACE FUNCTION chat_expire_payment_requests() RETURNS integer
LANGUAGE sql AS $$ SELECT count(*)::integer FROM chat_expire_due_payment_requests() $$;
