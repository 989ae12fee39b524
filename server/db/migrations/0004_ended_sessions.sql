-- Every server process polls for sessions ended recently (server/auth/sessions.py): their access
-- tokens stop working before they expire.
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
