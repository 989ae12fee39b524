-- A room's message log: appending (gap-free sequences in commit order) and SendMessage.

-- Appends one message to a room's log. The room row lock serializes writers per room, so
-- sequences are gap-free and in commit order; the notification is delivered at commit.
CREATE OR REPLACE FUNCTION chat_append(
    p_room uuid, p_sender uuid, p_client_message_id text, p_kind text, p_body text,
    p_transfer uuid DEFAULT NULL, p_note text DEFAULT NULL,
    p_payment_request uuid DEFAULT NULL, p_request_state text DEFAULT NULL, p_request_id uuid DEFAULT NULL
) RETURNS messages
LANGUAGE plpgsql AS $$
DECLARE
    v_sequence bigint;
    v_message messages;
BEGIN
    UPDATE rooms SET last_sequence = last_sequence + 1
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
    PERFORM chat_notify_message(p_room, v_sequence);
    RETURN v_message;
END
$$;

-- SendMessage in one round trip: membership check, retry deduplication, append.
CREATE OR REPLACE FUNCTION chat_send_message(p_room uuid, p_sender uuid, p_client_message_id text, p_text text)
RETURNS messages
LANGUAGE plpgsql AS $$
DECLARE
    v_message messages;
BEGIN
    -- Lock the room first: a concurrent retry with the same client_message_id then waits here
    -- and, once we commit, finds our row below instead of failing on the unique constraint.
    IF NOT chat_lock_room_of_member(p_room, p_sender) THEN
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

-- SendMessage for several messages of one room in one transaction, as chat_send_message does each
-- (the room's lock serializes its writers up to their commit, so messages that arrive while one
-- commits wait, then go together: one commit for all). One row per item, `idx` its 1-based
-- position: the stored message (a retry's: the first one), or NULL when the sender is not a member.
CREATE OR REPLACE FUNCTION chat_send_messages(
    p_room uuid, p_sender uuid[], p_client_message_id text[], p_text text[]
) RETURNS TABLE (idx integer, message messages)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM rooms r
    WHERE r.id = p_room
      AND EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = r.id AND m.user_id = ANY (p_sender))
    FOR UPDATE OF r;
    FOR i IN 1 .. cardinality(p_sender) LOOP
        idx := i;
        message := NULL;
        IF EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = p_room AND m.user_id = p_sender[i]) THEN
            IF p_client_message_id[i] IS NOT NULL THEN
                SELECT * INTO message FROM messages m
                WHERE m.room_id = p_room AND m.sender_id = p_sender[i]
                  AND m.client_message_id = p_client_message_id[i];
            END IF;
            IF message.sequence IS NULL THEN
                message := chat_append(p_room, p_sender[i], p_client_message_id[i], 'text', p_text[i]);
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Locks the room when p_user is a member of it; false when not. The member row is locked too
-- (KEY SHARE: it blocks only its deletion): after waiting for the room's lock, READ COMMITTED
-- re-reads the locked rows alone, so a member removed meanwhile is seen gone only through it.
CREATE OR REPLACE FUNCTION chat_lock_room_of_member(p_room uuid, p_user uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM rooms r JOIN room_members m ON m.room_id = r.id AND m.user_id = p_user
    WHERE r.id = p_room
    FOR UPDATE OF r FOR KEY SHARE OF m;
    RETURN FOUND;
END
$$;

-- '12.34 USD' for 1234 minor units of USD.
CREATE OR REPLACE FUNCTION chat_money(p_amount bigint, p_currency text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT round(p_amount::numeric / 10::numeric ^ c.exponent, c.exponent)::text || ' ' || c.code
    FROM currencies c WHERE c.code = p_currency
$$;
