-- Presence across server processes (tables chat_replicas and chat_presence). Each process
-- (replica) keeps a row per (room, user) that has a live stream there; a user is present in a
-- room while any replica has that row. A change is announced (chat_notify_presence) only when it
-- flips the user's presence across all replicas. Replicas register and heartbeat in
-- chat_replicas; the rows of one silent for too long (a crash, a lost database connection) are
-- taken away, announcing who went offline with it. Each replica also reconciles its rows with its
-- streams at every heartbeat (server/chat/presence.py), so a lost write, a reap of a replica that
-- was only cut off, or the unlogged tables emptied by a crash all heal by themselves.
-- Functions that take several (room, user) locks take them in (room, user) order, in batches
-- (each lock holds a slot of the shared lock table until commit), and wait at most 2 s for one.

-- One replica's users entered (p_online) or all left a room; announces only a change of presence.
-- The (room, user) lock makes concurrent calls from several replicas agree on who flips it. With
-- p_if_silent_for (reaping), the row goes only if its replica is still silent once the lock is held.
CREATE OR REPLACE FUNCTION chat_presence_set(
    p_room uuid, p_user uuid, p_replica uuid, p_online boolean, p_if_silent_for interval DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('chat_presence:' || p_room || ':' || p_user, 0));
    IF p_online THEN
        INSERT INTO chat_presence (room_id, user_id, replica) VALUES (p_room, p_user, p_replica)
        ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM chat_presence p
        WHERE p.room_id = p_room AND p.user_id = p_user AND p.replica = p_replica
          AND (p_if_silent_for IS NULL OR NOT EXISTS (
              SELECT 1 FROM chat_replicas r
              WHERE r.replica = p_replica AND r.seen_at > clock_timestamp() - p_if_silent_for));
    END IF;
    IF FOUND AND NOT EXISTS (
        SELECT 1 FROM chat_presence WHERE room_id = p_room AND user_id = p_user AND replica <> p_replica
    ) THEN
        PERFORM chat_notify_presence(p_room, p_user, p_online);
    END IF;
END $$;

-- A replica is stopping: up to p_batch of its rows go (call again while it returns p_batch); the
-- last call forgets the replica.
CREATE OR REPLACE FUNCTION chat_presence_leave_all(p_replica uuid, p_batch integer) RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '2s'
AS $$
DECLARE
    v record;
    v_count integer := 0;
BEGIN
    FOR v IN SELECT room_id, user_id FROM chat_presence WHERE replica = p_replica
             ORDER BY room_id, user_id LIMIT p_batch LOOP
        PERFORM chat_presence_set(v.room_id, v.user_id, p_replica, false);
        v_count := v_count + 1;
    END LOOP;
    IF v_count < p_batch THEN
        DELETE FROM chat_replicas WHERE replica = p_replica;
    END IF;
    RETURN v_count;
END $$;

-- A replica says it is alive (its own short transaction: it takes no presence lock). True when it
-- was unknown or silent for p_stale until now (its rows may have been taken away).
CREATE OR REPLACE FUNCTION chat_presence_register(p_replica uuid, p_stale interval) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_seen timestamptz;
BEGIN
    SELECT seen_at INTO v_seen FROM chat_replicas WHERE replica = p_replica;
    INSERT INTO chat_replicas (replica, seen_at) VALUES (p_replica, clock_timestamp())
    ON CONFLICT (replica) DO UPDATE SET seen_at = excluded.seen_at;
    RETURN v_seen IS NULL OR v_seen <= clock_timestamp() - p_stale;
END $$;

-- Take away up to p_batch rows of replicas silent for p_stale (call again while it returns
-- p_batch); one reaper at a time, the others skip. The last call forgets the silent replicas.
CREATE OR REPLACE FUNCTION chat_presence_reap(p_stale interval, p_batch integer) RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '2s'
AS $$
DECLARE
    v record;
    v_count integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('chat_presence:reaper', 0)) THEN
        RETURN 0;
    END IF;
    FOR v IN
        SELECT p.room_id, p.user_id, p.replica FROM chat_presence p
        WHERE NOT EXISTS (
            SELECT 1 FROM chat_replicas r WHERE r.replica = p.replica AND r.seen_at > clock_timestamp() - p_stale)
        ORDER BY p.room_id, p.user_id, p.replica
        LIMIT p_batch
    LOOP
        PERFORM chat_presence_set(v.room_id, v.user_id, v.replica, false, p_stale);
        v_count := v_count + 1;
    END LOOP;
    IF v_count < p_batch THEN
        DELETE FROM chat_replicas WHERE seen_at <= clock_timestamp() - p_stale;
    END IF;
    RETURN v_count;
END $$;
