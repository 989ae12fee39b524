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
    currency     text NOT NULL,
    amount_minor bigint NOT NULL,
    note         text NOT NULL DEFAULT '',
    state        text NOT NULL DEFAULT 'open',
    expire_at    timestamptz,
    transfer_id  uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_requests_request_id_key UNIQUE (request_id),
    CONSTRAINT payment_requests_amount_positive CHECK (amount_minor > 0),
    CONSTRAINT payment_requests_state_known
        CHECK (state IN ('open', 'paid', 'declined', 'cancelled', 'expired')),
    CONSTRAINT payment_requests_paid_has_transfer CHECK ((state = 'paid') = (transfer_id IS NOT NULL)),
    CONSTRAINT payment_requests_parties_differ CHECK (requester_id <> payer_id)
);

CREATE TABLE messages (
    room_id            uuid NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    sequence           bigint NOT NULL,
    sender_id          uuid REFERENCES users (id),
    client_message_id  text,
    kind               text NOT NULL,
    body               text NOT NULL,
    -- PAYMENT: the ledger transfer and the payer's note.
    transfer_id        uuid,
    note               text,
    -- PAYMENT_REQUEST: the request and its state as of this message.
    payment_request_id uuid REFERENCES payment_requests (id),
    request_state      text,
    -- The request_id of the money RPC that wrote this message (idempotency).
    request_id         uuid,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (room_id, sequence),
    CONSTRAINT messages_client_message_id_key UNIQUE (room_id, sender_id, client_message_id),
    CONSTRAINT messages_request_id_key UNIQUE (request_id),
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
