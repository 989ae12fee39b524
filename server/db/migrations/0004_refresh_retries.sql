-- A RefreshToken retried after its reply was lost gets the same answer (server/users/signin.py):
-- the request that used a token and the successor it received, and when each token was issued
-- (with its expiry, enough to sign the same token again). Rows from before stay NULL: a retry of
-- such a rotation is a reuse, as it was.
ALTER TABLE refresh_tokens
    ADD COLUMN issued_at       timestamptz,
    ADD COLUMN used_by_request uuid,
    ADD COLUMN successor_jti   uuid;
