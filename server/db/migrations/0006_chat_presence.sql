-- Presence across server processes. Each process (replica) keeps a row per (room, user) that has
-- a live stream there; a user is present in a room while any replica has that row. The change a
-- row makes is announced (NOTIFY 'p|room|user|1' or '…|0') only when it flips the user's presence
-- across all replicas. Replicas heartbeat in chat_replicas; the rows of one that stops (a crash)
-- are taken away by the others, announcing who went offline with it. Presence is ephemeral:
-- the tables are unlogged (emptied after a database crash, when every stream reconnects anyway).
CREATE UNLOGGED TABLE chat_replicas (
    replica uuid PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

CREATE UNLOGGED TABLE chat_presence (
    room_id uuid NOT NULL,
    user_id uuid NOT NULL,
    replica uuid NOT NULL,
    PRIMARY KEY (room_id, user_id, replica)
);

-- One replica's user entered (p_online) or left a room; announces only a change of presence.
-- The (room, user) lock makes concurrent calls from several replicas agree on who flips it.
CREATE FUNCTION chat_presence_set(p_room uuid, p_user uuid, p_replica uuid, p_online boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('chat_presence:' || p_room || ':' || p_user, 0));
    IF p_online THEN
        INSERT INTO chat_presence (room_id, user_id, replica) VALUES (p_room, p_user, p_replica)
        ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM chat_presence WHERE room_id = p_room AND user_id = p_user AND replica = p_replica;
    END IF;
    IF FOUND AND NOT EXISTS (
        SELECT 1 FROM chat_presence WHERE room_id = p_room AND user_id = p_user AND replica <> p_replica
    ) THEN
        PERFORM pg_notify('chat_events', 'p|' || p_room || '|' || p_user || '|' || CASE WHEN p_online THEN '1' ELSE '0' END);
    END IF;
END $$;

-- Take a replica's users out of every room (it is stopping, or it stopped heartbeating).
-- Rows go in (room, user) order, so two replicas doing this at once take the locks in one order.
CREATE FUNCTION chat_presence_leave_all(p_replica uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_count integer := 0;
BEGIN
    FOR v IN SELECT room_id, user_id FROM chat_presence WHERE replica = p_replica ORDER BY room_id, user_id LOOP
        PERFORM chat_presence_set(v.room_id, v.user_id, p_replica, false);
        v_count := v_count + 1;
    END LOOP;
    DELETE FROM chat_replicas WHERE replica = p_replica;
    RETURN v_count;
END $$;

-- A replica says it is alive, and takes away the presence of replicas silent for p_stale, in the
-- same (room, user) order as chat_presence_leave_all. Returns how many rows it took away.
CREATE FUNCTION chat_presence_heartbeat(p_replica uuid, p_stale interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_count integer := 0;
BEGIN
    INSERT INTO chat_replicas (replica, seen_at) VALUES (p_replica, clock_timestamp())
    ON CONFLICT (replica) DO UPDATE SET seen_at = excluded.seen_at;
    FOR v IN
        SELECT p.room_id, p.user_id, p.replica FROM chat_presence p
        WHERE NOT EXISTS (
            SELECT 1 FROM chat_replicas r WHERE r.replica = p.replica AND r.seen_at > clock_timestamp() - p_stale)
        ORDER BY p.room_id, p.user_id, p.replica
    LOOP
        PERFORM chat_presence_set(v.room_id, v.user_id, v.replica, false);
        v_count := v_count + 1;
    END LOOP;
    DELETE FROM chat_replicas WHERE seen_at <= clock_timestamp() - p_stale;
    RETURN v_count;
END $$;
