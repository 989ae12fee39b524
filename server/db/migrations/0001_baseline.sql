-- The schema as of the first release: tables, indexes, constraints and the append-only triggers.
--
-- Squashed before the first release from the six migrations that built it (0001_users,
-- 0002_ledger, 0003_chat, 0004_ended_sessions, 0005_room_list_snapshots, 0006_chat_presence);
-- a database those made is recognized and recorded as having this one (server/db/migrate.py).
-- Functions are not here: server/db/functions/ holds them, re-applied by every migrate run.

-- Users, their sessions (refresh-token families) and login throttling.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username      text NOT NULL,
    password_hash text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    role          text NOT NULL DEFAULT 'user',
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_username_format CHECK (username ~ '^[a-z0-9_.-]{3,32}$'),
    CONSTRAINT users_display_name_length CHECK (char_length(display_name) <= 64),
    CONSTRAINT users_role_known CHECK (role IN ('user', 'admin'))
);

-- A session is one login; its refresh tokens form a rotation family.
CREATE TABLE sessions (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    jti        uuid PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);

-- Fixed-window counters shared by every replica: key is 'user:<name>' or 'peer:<ip>'.
CREATE TABLE login_attempts (
    key          text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    attempts     integer NOT NULL
);

-- The double-entry ledger: currencies, accounts, immutable transfers, pending resolutions and
-- the event log WatchTransfers replays. The functions that make each operation one round trip
-- are in server/db/functions/. The two trigger functions are here, with the triggers they
-- serve: they are constraints (append-only rows), not behaviour.

CREATE TABLE currencies (
    code     text PRIMARY KEY,
    exponent smallint NOT NULL,
    CONSTRAINT currencies_code_format CHECK (code ~ '^[A-Z]{3}$'),
    CONSTRAINT currencies_exponent_range CHECK (exponent BETWEEN 0 AND 4)
);
-- Keep in step with server/ledger/currencies.py (a test compares them).
INSERT INTO currencies (code, exponent) VALUES
    ('AUD', 2), ('BRL', 2), ('CAD', 2), ('CHF', 2), ('CNY', 2), ('EUR', 2), ('GBP', 2),
    ('GHS', 2), ('INR', 2), ('JPY', 0), ('KES', 2), ('KRW', 0), ('MXN', 2), ('NGN', 2),
    ('USD', 2), ('XOF', 0), ('ZAR', 2);

-- One account per (user, currency); user_id NULL is the currency's system (issuing) account,
-- the only one allowed below zero. pending_debit is what outgoing pending transfers reserve.
CREATE TABLE accounts (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid REFERENCES users (id),
    currency      text NOT NULL REFERENCES currencies (code),
    balance       bigint NOT NULL DEFAULT 0,
    pending_debit bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_owner_currency_key UNIQUE NULLS NOT DISTINCT (user_id, currency),
    CONSTRAINT accounts_pending_debit_nonnegative CHECK (pending_debit >= 0),
    CONSTRAINT accounts_user_available_nonnegative
        CHECK (user_id IS NULL OR balance - pending_debit >= 0)
);
INSERT INTO accounts (user_id, currency) SELECT NULL, code FROM currencies;

-- A transfer moves (or, while pending, reserves) money between two accounts of one currency.
-- Posted, voided and expired transfers are immutable; only a pending one changes, once.
-- The account ids carry no foreign key: on the hot path its per-row checks cost about a third
-- of the insert. They are taken from account rows the same statement has locked, accounts can
-- never be deleted (trigger below), and AuditLedger reports any transfer whose account is missing.
CREATE TABLE transfers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    initiator_id    uuid NOT NULL,
    request_id      uuid NOT NULL,
    kind            text NOT NULL,
    two_phase       boolean NOT NULL,
    state           text NOT NULL,
    from_account_id uuid NOT NULL,
    to_account_id   uuid NOT NULL,
    from_user_id    uuid,
    to_user_id      uuid,
    currency        text NOT NULL,
    amount          bigint NOT NULL,
    posted_amount   bigint NOT NULL,
    memo            text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    resolved_at     timestamptz,
    CONSTRAINT transfers_initiator_request_key UNIQUE (initiator_id, request_id),
    CONSTRAINT transfers_kind_known CHECK (kind IN ('transfer', 'deposit', 'withdrawal')),
    CONSTRAINT transfers_state_known CHECK (state IN ('pending', 'posted', 'voided', 'expired')),
    CONSTRAINT transfers_amount_positive CHECK (amount > 0),
    CONSTRAINT transfers_posted_amount_range CHECK (
        posted_amount BETWEEN 0 AND amount
        AND (state = 'posted' OR posted_amount = 0)
        AND (state <> 'posted' OR posted_amount > 0)
    ),
    CONSTRAINT transfers_distinct_accounts CHECK (from_account_id <> to_account_id),
    CONSTRAINT transfers_memo_length CHECK (char_length(memo) <= 256),
    CONSTRAINT transfers_resolved_when_final CHECK ((state = 'pending') = (resolved_at IS NULL))
);
CREATE INDEX transfers_from_user_seq_idx ON transfers (from_user_id, seq);
CREATE INDEX transfers_to_user_seq_idx ON transfers (to_user_id, seq);
CREATE INDEX transfers_pending_from_idx ON transfers (from_account_id) WHERE state = 'pending';
CREATE INDEX transfers_pending_to_idx ON transfers (to_account_id) WHERE state = 'pending';
CREATE INDEX transfers_pending_expiry_idx ON transfers (expires_at)
    WHERE state = 'pending' AND expires_at IS NOT NULL;

-- Post and void carry their own request_id; a retry finds its resolution here.
CREATE TABLE transfer_resolutions (
    initiator_id     uuid NOT NULL,
    request_id       uuid NOT NULL,
    transfer_id      uuid NOT NULL REFERENCES transfers (id),
    action           text NOT NULL,
    requested_amount bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (initiator_id, request_id),
    CONSTRAINT transfer_resolutions_action_known CHECK (action IN ('post', 'void'))
);

-- The log WatchTransfers replays: one row per transfer state change, written in the same
-- transaction. Rows are ordered by (xid, seq): a reader only takes rows whose transaction id is
-- below the oldest still running, so nothing can later appear before a cursor already handed out.
CREATE TABLE ledger_events (
    xid           bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    transfer_id   uuid NOT NULL,
    from_user_id  uuid,
    to_user_id    uuid,
    state         text NOT NULL,
    posted_amount bigint NOT NULL,
    resolved_at   timestamptz,
    PRIMARY KEY (xid, seq)
);

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only', TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE FUNCTION ledger_guard_transfer_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'pending' THEN
        RAISE EXCEPTION 'transfer % is % and immutable', OLD.id, OLD.state
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.id, NEW.seq, NEW.initiator_id, NEW.request_id, NEW.kind, NEW.two_phase, NEW.from_account_id,
        NEW.to_account_id, NEW.currency, NEW.amount, NEW.memo, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.seq, OLD.initiator_id, OLD.request_id, OLD.kind, OLD.two_phase, OLD.from_account_id,
        OLD.to_account_id, OLD.currency, OLD.amount, OLD.memo, OLD.created_at) THEN
        RAISE EXCEPTION 'only the state of pending transfer % may change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER transfers_guard_update BEFORE UPDATE ON transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_guard_transfer_update();
CREATE TRIGGER transfers_refuse_delete BEFORE DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER transfer_resolutions_refuse_change BEFORE UPDATE OR DELETE ON transfer_resolutions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_events_refuse_change BEFORE UPDATE OR DELETE ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER accounts_refuse_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- Chat: rooms, members, the per-room message log (gap-free sequences), payment requests.

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
    -- The writing transaction's id: ListRooms pages order rooms by what their first page's
    -- snapshot saw (a page token carries pg_current_snapshot()).
    xid                bigint DEFAULT (pg_current_xact_id()::text::bigint),
    PRIMARY KEY (room_id, sequence),
    CONSTRAINT messages_client_message_id_key UNIQUE (room_id, sender_id, client_message_id),
    CONSTRAINT messages_request_id_key UNIQUE (sender_id, request_id),
    CONSTRAINT messages_kind_known CHECK (kind IN ('text', 'payment', 'payment_request', 'system')),
    CONSTRAINT messages_sequence_positive CHECK (sequence > 0),
    CONSTRAINT messages_text_length CHECK (kind <> 'text' OR char_length(body) BETWEEN 1 AND 4000),
    CONSTRAINT messages_payment_has_transfer CHECK ((kind = 'payment') = (transfer_id IS NOT NULL)),
    CONSTRAINT messages_request_has_request CHECK ((kind = 'payment_request') = (payment_request_id IS NOT NULL))
);

-- Every server process polls for sessions ended recently (server/auth/sessions.py): their access
-- tokens stop working before they expire.
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Presence across server processes. Each process (replica) keeps a row per (room, user) that has
-- a live stream there; a user is present in a room while any replica has that row. A change is
-- announced (NOTIFY 'p|room|user|1' or '…|0') only when it flips the user's presence across all
-- replicas. Replicas register and heartbeat in chat_replicas; the rows of one silent for too long
-- (a crash, a lost database connection) are taken away, announcing who went offline with it. Each
-- replica also reconciles its rows with its streams at every heartbeat, so a lost write, a reap of
-- a replica that was only cut off, or the unlogged tables emptied by a crash all heal by themselves.
-- Functions that take several (room, user) locks take them in (room, user) order, in batches
-- (each lock holds a slot of the shared lock table until commit), and wait at most 2 s for one.
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
CREATE INDEX chat_presence_replica_idx ON chat_presence (replica);
