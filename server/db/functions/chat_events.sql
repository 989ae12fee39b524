-- The chat events every replica's live streams hear of, sent with pg_notify on 'chat_events' inside
-- the writing transaction (so delivered at commit, never for a rollback). The payload format is
-- defined, and parsed, in server/chat/events.py (the one codec; a test round-trips these through
-- it). Payloads are tiny: the messages table is the log, a notification only says where to look.
--
-- A session whose connections carry `sendinchat.chat_notify=off` (a replica on the NATS chat bus,
-- server/chat/bus_nats.py) notifies nothing: its writers publish the same payloads to NATS after
-- commit, from what these functions' callers return, and its commits never take NOTIFY's lock.

CREATE OR REPLACE FUNCTION chat_notifies() RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT coalesce(current_setting('sendinchat.chat_notify', true), '') <> 'off' $$;

CREATE OR REPLACE FUNCTION chat_notify_message(p_room uuid, p_sequence bigint) RETURNS void
LANGUAGE sql AS $$ SELECT pg_notify('chat_events', 'm|' || p_room || '|' || p_sequence) WHERE chat_notifies() $$;

CREATE OR REPLACE FUNCTION chat_notify_removed(p_room uuid, p_user uuid) RETURNS void
LANGUAGE sql AS $$ SELECT pg_notify('chat_events', 'x|' || p_room || '|' || p_user) WHERE chat_notifies() $$;

CREATE OR REPLACE FUNCTION chat_notify_read(p_room uuid, p_user uuid, p_sequence bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('chat_events', 'r|' || p_room || '|' || p_user || '|' || p_sequence) WHERE chat_notifies()
$$;

CREATE OR REPLACE FUNCTION chat_notify_typing(p_room uuid, p_user uuid) RETURNS void
LANGUAGE sql AS $$ SELECT pg_notify('chat_events', 't|' || p_room || '|' || p_user) WHERE chat_notifies() $$;

CREATE OR REPLACE FUNCTION chat_notify_presence(p_room uuid, p_user uuid, p_online boolean) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('chat_events', 'p|' || p_room || '|' || p_user || '|' || CASE WHEN p_online THEN '1' ELSE '0' END)
    WHERE chat_notifies()
$$;
