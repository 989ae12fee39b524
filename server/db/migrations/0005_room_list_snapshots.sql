-- ListRooms orders every page of one listing by each room's activity as the first page saw it:
-- its page tokens carry that page's snapshot (pg_current_snapshot()), and a message counts when
-- its transaction is visible in it. Messages written before this migration have no xid; they
-- committed long before any listing that can still be paging, so they count as visible.
-- Added without a rewrite: the column first, then the default for new rows. (rooms.last_activity_at
-- is no longer read; it is still written, for servers of the previous version during a rollout.)
ALTER TABLE messages ADD COLUMN xid bigint;
ALTER TABLE messages ALTER COLUMN xid SET DEFAULT (pg_current_xact_id()::text::bigint);
