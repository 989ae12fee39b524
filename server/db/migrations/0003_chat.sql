-- Chat: rooms, members, the per-room message log (gap-free sequences), payment requests.
--
-- Every change a live stream must hear about is announced with pg_notify('chat_events', ...)
-- inside the writing transaction, so it is delivered at commit and never for a rollback.
-- Payloads are tiny; the messages table is the log. Formats (fields split by '|'):
--   m|<room>|<sequence>        a message was stored
--   x|<room>|<user>            a member left or was removed
--   r|<room>|<user>|<sequence> a member moved their read mark
--   t|<room>|<user>            a member is typing (not stored)
--   p|<room>|<user>|<0|1>      a member went offline / came online (not stored)

CREATE TABLE rooms (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind             text NOT NULL,
    name             text NOT NULL DEFAULT '',
    -- Direct rooms: '<smaller user id>:<larger user id>', which makes them unique per pair.
    direct_key       text,
    last_sequence    bigint NOT NULL DEFAULT 0,
    last_activity_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rooms_kind_known CHECK (kind IN ('direct', 'group')),
    CONSTRAINT rooms_direct_key_key UNIQUE (direct_key),
    CONSTRAINT rooms_direct_has_key CHECK ((kind = 'direct') = (direct_key IS NOT NULL)),
    CONSTRAINT rooms_name_length CHECK (char_length(name) <= 100)
);

CREATE TABLE room_members (
    room_id            uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role               text NOT NULL DEFAULT 'member',
    last_read_sequence bigint NOT NULL DEFAULT 0,
    joined_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (room_id, user_id),
    CONSTRAINT room_members_role_known CHECK (role IN ('owner', 'member'))
);
CREATE INDEX room_members_user_id_idx ON room_members (user_id);

CREATE TABLE payment_requests (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id   uuid NOT NULL,
    room_id      uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    requester_id uuid NOT NULL REFERENCES users (id),
    payer_id     uuid NOT NULL REFERENCES users (id),
    currency     text NOT NULL REFERENCES currencies (code),
    amount_minor bigint NOT NULL,
    note         text NOT NULL DEFAULT '',
    state        text NOT NULL DEFAULT 'open',
    expire_at    timestamptz,
    transfer_id  uuid REFERENCES transfers (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_requests_request_id_key UNIQUE (requester_id, request_id),
    CONSTRAINT payment_requests_amount_positive CHECK (amount_minor > 0),
    CONSTRAINT payment_requests_state_known
        CHECK (state IN ('open', 'paid', 'declined', 'cancelled', 'expired')),
    CONSTRAINT payment_requests_paid_has_transfer CHECK ((state = 'paid') = (transfer_id IS NOT NULL)),
    CONSTRAINT payment_requests_parties_differ CHECK (requester_id <> payer_id),
    CONSTRAINT payment_requests_note_length CHECK (char_length(note) <= 256)
);
CREATE INDEX payment_requests_open_expiry_idx ON payment_requests (expire_at)
    WHERE state = 'open' AND expire_at IS NOT NULL;

CREATE TABLE messages (
    room_id            uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    sequence           bigint NOT NULL,
    sender_id          uuid REFERENCES users (id),
    client_message_id  text,
    kind               text NOT NULL,
    body               text NOT NULL,
    -- PAYMENT: the ledger transfer and the payer's note.
    transfer_id        uuid REFERENCES transfers (id),
    note               text,
    -- PAYMENT_REQUEST: the request and its state as of this message.
    payment_request_id uuid REFERENCES payment_requests (id),
    request_state      text,
    -- The request_id of the money RPC that wrote this message (idempotency, per sender).
    request_id         uuid,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (room_id, sequence),
    CONSTRAINT messages_client_message_id_key UNIQUE (room_id, sender_id, client_message_id),
    CONSTRAINT messages_request_id_key UNIQUE (sender_id, request_id),
    CONSTRAINT messages_kind_known CHECK (kind IN ('text', 'payment', 'payment_request', 'system')),
    CONSTRAINT messages_sequence_positive CHECK (sequence > 0),
    CONSTRAINT messages_text_length CHECK (kind <> 'text' OR char_length(body) BETWEEN 1 AND 4000),
    CONSTRAINT messages_payment_has_transfer CHECK ((kind = 'payment') = (transfer_id IS NOT NULL)),
    CONSTRAINT messages_request_has_request CHECK ((kind = 'payment_request') = (payment_request_id IS NOT NULL))
);

-- Appends one message to a room's log. The room row lock serializes writers per room, so
-- sequences are gap-free and in commit order; the NOTIFY is delivered at commit.
CREATE FUNCTION chat_append(
    p_room uuid, p_sender uuid, p_client_message_id text, p_kind text, p_body text,
    p_transfer uuid DEFAULT NULL, p_note text DEFAULT NULL,
    p_payment_request uuid DEFAULT NULL, p_request_state text DEFAULT NULL, p_request_id uuid DEFAULT NULL
) RETURNS messages
LANGUAGE plpgsql AS $$
DECLARE
    v_sequence bigint;
    v_message messages;
BEGIN
    UPDATE rooms SET last_sequence = last_sequence + 1, last_activity_at = clock_timestamp()
    WHERE id = p_room
    RETURNING last_sequence INTO v_sequence;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'room not found' USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO messages (room_id, sequence, sender_id, client_message_id, kind, body, transfer_id, note,
                          payment_request_id, request_state, request_id)
    VALUES (p_room, v_sequence, p_sender, p_client_message_id, p_kind, p_body, p_transfer, p_note,
            p_payment_request, p_request_state, p_request_id)
    RETURNING * INTO v_message;
    IF p_sender IS NOT NULL THEN
        -- Writing a message means having read the room up to it.
        UPDATE room_members SET last_read_sequence = GREATEST(last_read_sequence, v_sequence)
        WHERE room_id = p_room AND user_id = p_sender;
    END IF;
    PERFORM pg_notify('chat_events', 'm|' || p_room || '|' || v_sequence);
    RETURN v_message;
END
$$;

-- SendMessage in one round trip: membership check, retry deduplication, append.
CREATE FUNCTION chat_send_message(p_room uuid, p_sender uuid, p_client_message_id text, p_text text)
RETURNS messages
LANGUAGE plpgsql AS $$
DECLARE
    v_message messages;
BEGIN
    -- Lock the room first: a concurrent retry with the same client_message_id then waits here
    -- and, once we commit, finds our row below instead of failing on the unique constraint.
    PERFORM 1 FROM rooms r JOIN room_members m ON m.room_id = r.id AND m.user_id = p_sender
    WHERE r.id = p_room
    FOR UPDATE OF r;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'room not found' USING ERRCODE = 'no_data_found';
    END IF;
    IF p_client_message_id IS NOT NULL THEN
        SELECT * INTO v_message FROM messages
        WHERE room_id = p_room AND sender_id = p_sender AND client_message_id = p_client_message_id;
        IF FOUND THEN
            RETURN v_message;
        END IF;
    END IF;
    RETURN chat_append(p_room, p_sender, p_client_message_id, 'text', p_text);
END
$$;

-- Payments in chat. Lock order, everywhere: the room row, then the payment request row, then
-- (inside ledger_create_transfers) the accounts. Outcomes are words, as in the ledger:
-- CREATED, REPLAYED, ROOM_NOT_FOUND, MEMBER_NOT_FOUND, IDEMPOTENCY_KEY_REUSED, plus the
-- ledger's INSUFFICIENT_FUNDS / RECIPIENT_NOT_FOUND / SELF_TRANSFER, and for requests
-- REQUEST_NOT_FOUND, WRONG_PARTY, PAYMENT_REQUEST_CLOSED, PAYMENT_REQUEST_EXPIRED.

-- '12.34 USD' for 1234 minor units of USD.
CREATE FUNCTION chat_money(p_amount bigint, p_currency text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT round(p_amount::numeric / 10::numeric ^ c.exponent, c.exponent)::text || ' ' || c.code
    FROM currencies c WHERE c.code = p_currency
$$;

-- Locks the room when p_user is a member of it; false when not.
CREATE FUNCTION chat_lock_room_of_member(p_room uuid, p_user uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM rooms r JOIN room_members m ON m.room_id = r.id AND m.user_id = p_user
    WHERE r.id = p_room
    FOR UPDATE OF r;
    RETURN FOUND;
END
$$;

-- One immediate user-to-user transfer through the ledger, inside the caller's transaction.
-- A REPLAYED transfer that the chat did not write (the request_id was used with the ledger
-- directly) counts as a reused key.
CREATE FUNCTION chat_transfer(
    p_request uuid, p_from uuid, p_to uuid, p_currency text, p_amount bigint, p_memo text,
    OUT outcome text, OUT transfer_id uuid
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.outcome, c.id INTO outcome, transfer_id
    FROM ledger_create_transfers(
        ARRAY[p_from], ARRAY[p_request], ARRAY['transfer'], ARRAY[false], ARRAY[p_from], ARRAY[p_to],
        ARRAY[NULL::text], ARRAY[p_currency], ARRAY[p_amount], ARRAY[p_memo], ARRAY[NULL::timestamptz]) c;
    IF outcome = 'REPLAYED' THEN
        outcome := 'IDEMPOTENCY_KEY_REUSED';
    END IF;
END
$$;

-- SendPayment: the transfer and the PAYMENT message, both or neither.
CREATE FUNCTION chat_send_payment(
    p_room uuid, p_payer uuid, p_request uuid, p_recipient uuid, p_currency text, p_amount bigint, p_note text,
    OUT outcome text, OUT room_id uuid, OUT sequence bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_message  messages;
    v_transfer uuid;
    v_attempt  integer;
BEGIN
    FOR v_attempt IN 1 .. 2 LOOP
        -- A retry returns the first message (checked again once the room is locked: a
        -- concurrent first attempt may have committed meanwhile).
        SELECT * INTO v_message FROM messages m WHERE m.sender_id = p_payer AND m.request_id = p_request;
        IF FOUND THEN
            IF v_message.kind = 'payment' AND v_message.room_id = p_room AND v_message.note = p_note
               AND EXISTS (SELECT 1 FROM transfers t WHERE t.id = v_message.transfer_id
                           AND t.to_user_id = p_recipient AND t.currency = p_currency AND t.amount = p_amount) THEN
                outcome := 'REPLAYED'; room_id := v_message.room_id; sequence := v_message.sequence;
            ELSE
                outcome := 'IDEMPOTENCY_KEY_REUSED';
            END IF;
            RETURN;
        END IF;
        IF v_attempt = 1 AND NOT chat_lock_room_of_member(p_room, p_payer) THEN
            outcome := 'ROOM_NOT_FOUND';
            RETURN;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = p_room AND m.user_id = p_recipient) THEN
        outcome := 'MEMBER_NOT_FOUND';
        RETURN;
    END IF;
    SELECT t.outcome, t.transfer_id INTO outcome, v_transfer
    FROM chat_transfer(p_request, p_payer, p_recipient, p_currency, p_amount, p_note) t;
    IF outcome <> 'CREATED' THEN
        RETURN;  -- the ledger wrote nothing, so neither do we
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
CREATE FUNCTION chat_request_payment(
    p_room uuid, p_requester uuid, p_request uuid, p_payer uuid, p_currency text, p_amount bigint,
    p_note text, p_expire timestamptz,
    OUT outcome text, OUT room_id uuid, OUT sequence bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_message messages;
    v_pr      payment_requests;
    v_attempt integer;
BEGIN
    FOR v_attempt IN 1 .. 2 LOOP
        SELECT * INTO v_message FROM messages m WHERE m.sender_id = p_requester AND m.request_id = p_request;
        IF FOUND THEN
            SELECT * INTO v_pr FROM payment_requests r WHERE r.id = v_message.payment_request_id;
            IF v_message.request_state = 'open'
               AND (v_pr.room_id, v_pr.payer_id, v_pr.currency, v_pr.amount_minor, v_pr.note)
                   = (p_room, p_payer, p_currency, p_amount, p_note)
               AND v_pr.expire_at IS NOT DISTINCT FROM p_expire THEN
                outcome := 'REPLAYED'; room_id := v_message.room_id; sequence := v_message.sequence;
            ELSE
                outcome := 'IDEMPOTENCY_KEY_REUSED';
            END IF;
            RETURN;
        END IF;
        IF v_attempt = 1 AND NOT chat_lock_room_of_member(p_room, p_requester) THEN
            outcome := 'ROOM_NOT_FOUND';
            RETURN;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = p_room AND m.user_id = p_payer) THEN
        outcome := 'MEMBER_NOT_FOUND';
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
CREATE FUNCTION chat_close_request(p_pr payment_requests, p_state text, p_actor uuid, p_request uuid, p_transfer uuid)
RETURNS messages
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
-- An expired request is closed as EXPIRED (that change commits) and the action refused.
CREATE FUNCTION chat_respond_payment_request(p_actor uuid, p_request uuid, p_pr uuid, p_action text,
    OUT outcome text, OUT room_id uuid, OUT sequence bigint, OUT state text
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_message  messages;
    v_pr       payment_requests;
    v_room     uuid;
    v_transfer uuid;
    v_state    text := CASE p_action WHEN 'accept' THEN 'paid' WHEN 'decline' THEN 'declined' ELSE 'cancelled' END;
    v_attempt  integer;
BEGIN
    SELECT r.room_id INTO v_room FROM payment_requests r WHERE r.id = p_pr;
    FOR v_attempt IN 1 .. 2 LOOP
        SELECT * INTO v_message FROM messages m WHERE m.sender_id = p_actor AND m.request_id = p_request;
        IF FOUND THEN
            IF v_message.payment_request_id IS NOT DISTINCT FROM p_pr AND v_message.request_state = v_state THEN
                outcome := 'REPLAYED'; room_id := v_message.room_id; sequence := v_message.sequence;
            ELSE
                outcome := 'IDEMPOTENCY_KEY_REUSED';
            END IF;
            RETURN;
        END IF;
        IF v_attempt = 1 AND (v_room IS NULL OR NOT chat_lock_room_of_member(v_room, p_actor)) THEN
            outcome := 'REQUEST_NOT_FOUND';
            RETURN;
        END IF;
    END LOOP;
    SELECT * INTO v_pr FROM payment_requests r WHERE r.id = p_pr FOR UPDATE;
    IF (p_action = 'cancel') <> (p_actor = v_pr.requester_id) OR p_actor NOT IN (v_pr.requester_id, v_pr.payer_id) THEN
        outcome := 'WRONG_PARTY';
        RETURN;
    END IF;
    IF v_pr.state = 'open' AND v_pr.expire_at <= now() THEN
        v_message := chat_close_request(v_pr, 'expired', NULL, NULL, NULL);
        v_pr.state := 'expired';
        outcome := 'PAYMENT_REQUEST_EXPIRED';
        state := 'expired';
        RETURN;
    END IF;
    IF v_pr.state <> 'open' THEN
        outcome := CASE WHEN v_pr.state = 'expired' THEN 'PAYMENT_REQUEST_EXPIRED' ELSE 'PAYMENT_REQUEST_CLOSED' END;
        state := v_pr.state;
        RETURN;
    END IF;
    IF p_action = 'accept' THEN
        SELECT t.outcome, t.transfer_id INTO outcome, v_transfer
        FROM chat_transfer(p_request, p_actor, v_pr.requester_id, v_pr.currency, v_pr.amount_minor, v_pr.note) t;
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

-- The sweeper: close every open request past its expiry with an EXPIRED message. Safe to run
-- from every replica at once (SKIP LOCKED); returns how many it closed.
CREATE FUNCTION chat_expire_payment_requests() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_id    uuid;
    v_room  uuid;
    v_pr    payment_requests;
    v_count integer := 0;
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
        PERFORM chat_close_request(v_pr, 'expired', NULL, NULL, NULL);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;
