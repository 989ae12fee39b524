-- Presence across server processes (tables chat_replicas and chat_presence). Each process
-- (replica) keeps a row per (room, user) that has a live stream there; a user is present in a
-- room while any replica has that row. A change is announced (chat_notify_presence) only when it
-- flips the user's presence across all replicas, and each function returns the flips it made, so
-- that a replica on the NATS chat bus (where nothing is notified) publishes them after commit.
-- Replicas register and heartbeat in chat_replicas; the rows of one silent for too long (a crash,
-- a lost database connection) are taken away, announcing who went offline with it. Each replica
-- also reconciles its rows with its streams at every heartbeat (server/chat/presence.py), so a
-- lost write, a reap of a replica that was only cut off, or the unlogged tables emptied by a
-- crash all heal by themselves.
-- Functions that take several (room, user) locks take them in (room, user) order, in batches
-- (each lock holds a slot of the shared lock table until commit), and wait at most 2 s for one.

-- One replica's users entered (p_online) or all left a room; true (and announced) only when that
-- flips the user's presence across replicas. The (room, user) lock makes concurrent calls from
-- several replicas agree on who flips it. With p_if_silent_for (reaping), the row goes only if its
-- replica is still silent once the lock is held.
CREATE OR REPLACE FUNCTION chat_presence_change(
    p_room uuid, p_user uuid, p_replica uuid, p_online boolean, p_if_silent_for interval DEFAULT NULL
) RETURNS boolean
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
        RETURN true;
    END IF;
    RETURN false;
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

-- Take away up to p_batch presence rows (call again while it returns p_batch rows), each with
-- whether its user went offline: with p_replica, that replica's (it is stopping); without, those
-- of replicas silent for p_stale (one reaper at a time: the others get no rows; a row goes only
-- if its replica is still silent once its lock is held). The last call forgets the replicas.
CREATE OR REPLACE FUNCTION chat_presence_take_away(p_replica uuid, p_stale interval, p_batch integer)
RETURNS TABLE (gone_room uuid, gone_user uuid, went_offline boolean)
LANGUAGE plpgsql
SET lock_timeout = '2s'
AS $$
DECLARE
    v record;
    v_count integer := 0;
    v_reaping boolean := p_replica IS NULL;
    -- Computed once: clock_timestamp() inside the NOT EXISTS would keep it a subquery per row.
    v_cutoff timestamptz := clock_timestamp() - p_stale;
BEGIN
    IF v_reaping AND p_stale IS NULL THEN
        RAISE EXCEPTION 'chat_presence_take_away: a replica, or how long a silent one has been silent';
    END IF;
    IF v_reaping AND NOT pg_try_advisory_xact_lock(hashtextextended('chat_presence:reaper', 0)) THEN
        RETURN;
    END IF;
    FOR v IN
        SELECT p.room_id, p.user_id, p.replica FROM chat_presence p
        WHERE p.replica = p_replica OR (v_reaping AND NOT EXISTS (
            SELECT 1 FROM chat_replicas r WHERE r.replica = p.replica AND r.seen_at > v_cutoff))
        ORDER BY p.room_id, p.user_id, p.replica
        LIMIT p_batch
    LOOP
        gone_room := v.room_id;
        gone_user := v.user_id;
        went_offline := chat_presence_change(
            v.room_id, v.user_id, v.replica, false, CASE WHEN v_reaping THEN p_stale END);
        v_count := v_count + 1;
        RETURN NEXT;
    END LOOP;
    IF v_count < p_batch THEN
        DELETE FROM chat_replicas WHERE replica = p_replica OR (v_reaping AND seen_at <= v_cutoff);
    END IF;
END $$;

-- The previous release's names (a void result, counts), kept so its servers work on during a
-- rolling upgrade; nothing in this release calls them. A later migration may drop them.
CREATE OR REPLACE FUNCTION chat_presence_set(
    p_room uuid, p_user uuid, p_replica uuid, p_online boolean, p_if_silent_for interval DEFAULT NULL
) RETURNS void
LANGUAGE sql AS $$ SELECT chat_presence_change(p_room, p_user, p_replica, p_online, p_if_silent_for) $$;

CREATE OR REPLACE FUNCTION chat_presence_leave_all(p_replica uuid, p_batch integer) RETURNS integer
LANGUAGE sql AS $$ SELECT count(*)::integer FROM chat_presence_take_away(p_replica, NULL, p_batch) $$;

CREATE OR REPLACE FUNCTION chat_presence_reap(p_stale interval, p_batch integer) RETURNS integer
LANGUAGE sql AS $$ SELECT count(*)::integer FROM chat_presence_take_away(NULL, p_stale, p_batch) $$;
