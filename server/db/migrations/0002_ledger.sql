-- The double-entry ledger: currencies, accounts, immutable transfers, pending resolutions,
-- the event log WatchTransfers replays, and the functions that make each operation one round trip.
--
-- Lock order, everywhere: accounts first, ordered by (user_id NULLS FIRST, currency), then
-- transfer rows. Every function below follows it, so concurrent calls cannot deadlock.

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

-- Create many transfers (immediate or pending, user, deposit or withdrawal) in one statement,
-- each with its own outcome. A NULL p_from_user / p_to_user is the system account; a NULL
-- p_to_user with a p_to_username names the recipient by username. Returns one row per item,
-- `idx` being its 1-based position (rows are not in idx order).
--
-- Outcomes: CREATED, REPLAYED (same initiator and request_id, same body: the first transfer is
-- returned), IDEMPOTENCY_KEY_REUSED, INSUFFICIENT_FUNDS, RECIPIENT_NOT_FOUND, SOURCE_NOT_FOUND,
-- SELF_TRANSFER. Decisions are checks, not exceptions, so one bad item never fails the others.
--
-- The items of a batch are concurrent requests, so any order of them is a valid serial order.
-- The fast path handles, set-based in a few statements, every item that cannot fail: both
-- accounts exist, request_id is new (and unique in the batch), and the sender holds enough for
-- all its items of the batch together. The rest go one by one through the slow path.
CREATE FUNCTION ledger_create_transfers(
    p_initiator   uuid[],
    p_request     uuid[],
    p_kind        text[],
    p_two_phase   boolean[],
    p_from_user   uuid[],
    p_to_user     uuid[],
    p_to_username text[],
    p_currency    text[],
    p_amount      bigint[],
    p_memo        text[],
    p_expires     timestamptz[]
) RETURNS TABLE (
    idx             integer,
    outcome         text,
    id              uuid,
    request_id      uuid,
    kind            text,
    state           text,
    from_user_id    uuid,
    to_user_id      uuid,
    from_account_id uuid,
    to_account_id   uuid,
    currency        text,
    amount          bigint,
    posted_amount   bigint,
    memo            text,
    created_at      timestamptz,
    expires_at      timestamptz,
    resolved_at     timestamptz
) LANGUAGE plpgsql
-- Its statements take arrays, so custom plans would be re-planned on every call for no gain. A
-- generic plan is made once per connection, often while the tables are small; the enable_*
-- settings keep it reading by key (see ledger_transfer_batch below).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    n          integer := cardinality(p_request);
    v_to_user  uuid[] := p_to_user;
    v_from_acc uuid[];
    v_to_acc   uuid[];
    v_fast     boolean[];
    v_done     integer[] := '{}';
    v_from     uuid;
    v_to       uuid;
    v_avail    bigint;
    v_t        transfers;
    v_notify   boolean := false;
    v_count    bigint;
    i          integer;
BEGIN
    -- Recipients named by username.
    IF EXISTS (SELECT 1 FROM unnest(p_to_username) AS u(name) WHERE name IS NOT NULL) THEN
        SELECT array_agg(coalesce(r.to_user, u.id) ORDER BY r.n) INTO v_to_user
        FROM unnest(v_to_user, p_to_username) WITH ORDINALITY AS r(to_user, name, n)
        LEFT JOIN users u ON u.username = r.name;
    END IF;

    -- Lock every account of the batch, in one ordered pass. Usually they all exist: then a plain
    -- SELECT ... FOR UPDATE does it. Otherwise a missing credit-side account is opened in the same
    -- ordered pass (ON CONFLICT DO UPDATE ... WHERE false locks an existing row without writing).
    -- A debit-side user account that does not exist is left alone: that item has no funds. The
    -- system account takes part only as the source of a deposit or the sink of a withdrawal.
    IF NOT EXISTS (
        SELECT 1 FROM unnest(v_to_user, p_currency) AS c(user_id, currency)
        WHERE c.user_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM accounts e WHERE e.user_id = c.user_id AND e.currency = c.currency)
    ) THEN
        -- System accounts sort first, so locking them in a statement of their own keeps the order.
        IF 'transfer' <> ANY (p_kind) THEN
            PERFORM 1 FROM accounts a
            WHERE a.user_id IS NULL AND a.currency IN (
                SELECT x.cur FROM unnest(p_kind, p_currency) AS x(kind, cur) WHERE x.kind <> 'transfer')
            ORDER BY a.currency
            FOR UPDATE;
        END IF;
        PERFORM 1 FROM accounts a
        WHERE (a.user_id, a.currency) IN (
            SELECT * FROM unnest(v_to_user, p_currency) UNION SELECT * FROM unnest(p_from_user, p_currency))
        ORDER BY a.user_id, a.currency
        FOR UPDATE;
    ELSE
        INSERT INTO accounts AS a (user_id, currency)
        SELECT k.user_id, k.currency
        FROM (
            SELECT DISTINCT x.user_id, x.currency
            FROM (
                SELECT c.user_id, c.currency, c.kind, true AS credit
                FROM unnest(v_to_user, p_currency, p_kind) AS c(user_id, currency, kind)
                UNION ALL
                SELECT d.user_id, d.currency, d.kind, false
                FROM unnest(p_from_user, p_currency, p_kind) AS d(user_id, currency, kind)
            ) x
            WHERE CASE
                WHEN x.user_id IS NULL THEN x.kind = CASE WHEN x.credit THEN 'withdrawal' ELSE 'deposit' END
                WHEN x.credit THEN EXISTS (SELECT 1 FROM users u WHERE u.id = x.user_id)
                ELSE EXISTS (SELECT 1 FROM accounts e WHERE e.user_id = x.user_id AND e.currency = x.currency)
            END
        ) k
        ORDER BY k.user_id NULLS FIRST, k.currency
        ON CONFLICT ON CONSTRAINT accounts_owner_currency_key DO UPDATE SET balance = a.balance WHERE false;
    END IF;

    -- Both accounts of every item, and whether the item can take the fast path.
    SELECT array_agg(c.from_acc ORDER BY c.n), array_agg(c.to_acc ORDER BY c.n),
           array_agg(c.candidate AND (c.system_source OR c.batch_total <= c.available) ORDER BY c.n)
    INTO v_from_acc, v_to_acc, v_fast
    FROM (
        SELECT b.*, sum(CASE WHEN b.candidate THEN b.amt ELSE 0 END) OVER (PARTITION BY b.from_acc) AS batch_total
        FROM (
            SELECT x.n, x.amt, x.fu IS NULL AS system_source,
                   coalesce(fu.id, fs.id) AS from_acc, coalesce(tu.id, ts.id) AS to_acc,
                   coalesce(fu.balance - fu.pending_debit, 0) AS available,
                   coalesce(fu.id, fs.id) IS NOT NULL AND coalesce(tu.id, ts.id) IS NOT NULL
                   AND coalesce(fu.id, fs.id) <> coalesce(tu.id, ts.id)
                   AND count(*) OVER (PARTITION BY x.ini, x.req) = 1
                   AND dup.id IS NULL AND res.transfer_id IS NULL
                   AS candidate
            FROM unnest(p_initiator, p_request, p_kind, p_from_user, v_to_user, p_currency, p_amount)
                 WITH ORDINALITY AS x(ini, req, kind, fu, tu, cur, amt, n)
            -- Joins, not NOT EXISTS: a generic plan may turn those into a hash of the whole table.
            LEFT JOIN transfers dup ON dup.initiator_id = x.ini AND dup.request_id = x.req
            LEFT JOIN transfer_resolutions res ON res.initiator_id = x.ini AND res.request_id = x.req
            LEFT JOIN accounts fu ON fu.user_id = x.fu AND fu.currency = x.cur
            LEFT JOIN accounts fs ON x.fu IS NULL AND x.kind = 'deposit' AND fs.user_id IS NULL AND fs.currency = x.cur
            LEFT JOIN accounts tu ON tu.user_id = x.tu AND tu.currency = x.cur
            LEFT JOIN accounts ts ON x.tu IS NULL AND x.kind = 'withdrawal' AND ts.user_id IS NULL AND ts.currency = x.cur
        ) b
    ) c;

    IF true = ANY (v_fast) THEN
        RETURN QUERY
        WITH ins AS (
            INSERT INTO transfers AS t (
                initiator_id, request_id, kind, two_phase, state, from_account_id, to_account_id,
                from_user_id, to_user_id, currency, amount, posted_amount, memo, expires_at, resolved_at)
            SELECT x.ini, x.req, x.kind, x.two, CASE WHEN x.two THEN 'pending' ELSE 'posted' END,
                   v_from_acc[x.n], v_to_acc[x.n], x.fu, x.tu, x.cur, x.amt,
                   CASE WHEN x.two THEN 0 ELSE x.amt END, x.memo, x.exp,
                   CASE WHEN x.two THEN NULL ELSE now() END
            FROM unnest(p_initiator, p_request, p_kind, p_two_phase, p_from_user, v_to_user, p_currency,
                        p_amount, p_memo, p_expires)
                 WITH ORDINALITY AS x(ini, req, kind, two, fu, tu, cur, amt, memo, exp, n)
            WHERE v_fast[x.n]
            ORDER BY x.n
            ON CONFLICT ON CONSTRAINT transfers_initiator_request_key DO NOTHING
            RETURNING t.*
        ), moved AS (
            UPDATE accounts a
            SET balance = a.balance + d.delta, pending_debit = a.pending_debit + d.reserve
            FROM (
                SELECT m.acc, sum(m.delta) AS delta, sum(m.reserve) AS reserve
                FROM (
                    SELECT ins.from_account_id AS acc, -ins.posted_amount AS delta,
                           CASE WHEN ins.state = 'pending' THEN ins.amount ELSE 0 END AS reserve
                    FROM ins
                    UNION ALL
                    SELECT ins.to_account_id, ins.posted_amount, 0 FROM ins
                ) m GROUP BY m.acc
            ) d
            WHERE a.id = d.acc
        ), logged AS (
            INSERT INTO ledger_events (transfer_id, from_user_id, to_user_id, state, posted_amount, resolved_at)
            SELECT ins.id, ins.from_user_id, ins.to_user_id, ins.state, ins.posted_amount, ins.resolved_at
            FROM ins ORDER BY ins.seq
        )
        SELECT x.n::integer, 'CREATED'::text, ins.id, ins.request_id, ins.kind, ins.state, ins.from_user_id,
               ins.to_user_id, ins.from_account_id, ins.to_account_id, ins.currency, ins.amount,
               ins.posted_amount, ins.memo, ins.created_at, ins.expires_at, ins.resolved_at
        FROM ins JOIN unnest(p_initiator, p_request) WITH ORDINALITY AS x(ini, req, n)
             ON ins.initiator_id = x.ini AND ins.request_id = x.req;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_notify := v_count > 0;
        IF v_count = (SELECT count(*) FROM unnest(v_fast) AS f(fast) WHERE f.fast) THEN
            SELECT coalesce(array_agg(f.n), '{}') INTO v_done
            FROM unnest(v_fast) WITH ORDINALITY AS f(fast, n) WHERE f.fast;
        ELSE
            -- A concurrent request took some request_id first: those items go the slow way.
            SELECT coalesce(array_agg(x.n), '{}') INTO v_done
            FROM unnest(p_initiator, p_request) WITH ORDINALITY AS x(ini, req, n)
            JOIN transfers t ON t.initiator_id = x.ini AND t.request_id = x.req
            WHERE v_fast[x.n] AND t.xmin = pg_current_xact_id()::xid;
        END IF;
    END IF;

    -- The slow path, one item at a time, in order.
    FOR i IN 1 .. n LOOP
        CONTINUE WHEN i = ANY (v_done);
        idx := i;
        v_from := v_from_acc[i];
        v_to := v_to_acc[i];
        v_t := NULL;
        IF v_to IS NULL THEN
            outcome := CASE
                WHEN p_kind[i] = 'withdrawal' AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_from_user[i])
                THEN 'SOURCE_NOT_FOUND' ELSE 'RECIPIENT_NOT_FOUND' END;
        ELSIF p_kind[i] = 'withdrawal' AND v_from IS NULL
              AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_from_user[i]) THEN
            outcome := 'SOURCE_NOT_FOUND';
        ELSIF p_kind[i] = 'transfer' AND v_to_user[i] = p_from_user[i] THEN
            outcome := 'SELF_TRANSFER';
        ELSIF EXISTS (SELECT 1 FROM transfer_resolutions r
                      WHERE r.initiator_id = p_initiator[i] AND r.request_id = p_request[i]) THEN
            outcome := 'IDEMPOTENCY_KEY_REUSED';  -- the request_id of a post or void
        ELSE
            outcome := NULL;
            IF p_from_user[i] IS NOT NULL THEN
                SELECT a.balance - a.pending_debit INTO v_avail FROM accounts a WHERE a.id = v_from;
                IF v_from IS NULL OR v_avail < p_amount[i] THEN
                    IF v_from IS NOT NULL THEN
                        -- Overdue reservations no longer hold money back: release them, look again.
                        PERFORM ledger_expire_account(v_from);
                        SELECT a.balance - a.pending_debit INTO v_avail FROM accounts a WHERE a.id = v_from;
                    END IF;
                    IF v_from IS NULL OR v_avail < p_amount[i] THEN
                        outcome := 'INSUFFICIENT_FUNDS';
                    END IF;
                END IF;
            END IF;
            IF outcome IS NULL THEN
                INSERT INTO transfers AS t (
                    initiator_id, request_id, kind, two_phase, state, from_account_id, to_account_id,
                    from_user_id, to_user_id, currency, amount, posted_amount, memo, expires_at, resolved_at)
                VALUES (
                    p_initiator[i], p_request[i], p_kind[i], p_two_phase[i],
                    CASE WHEN p_two_phase[i] THEN 'pending' ELSE 'posted' END,
                    v_from, v_to, p_from_user[i], v_to_user[i], p_currency[i], p_amount[i],
                    CASE WHEN p_two_phase[i] THEN 0 ELSE p_amount[i] END, p_memo[i], p_expires[i],
                    CASE WHEN p_two_phase[i] THEN NULL ELSE now() END)
                ON CONFLICT ON CONSTRAINT transfers_initiator_request_key DO NOTHING
                RETURNING t.* INTO v_t;
                IF FOUND THEN
                    outcome := 'CREATED';
                    v_notify := true;
                    IF p_two_phase[i] THEN
                        UPDATE accounts a SET pending_debit = a.pending_debit + p_amount[i] WHERE a.id = v_from;
                    ELSE
                        UPDATE accounts a
                        SET balance = a.balance + CASE WHEN a.id = v_from THEN -p_amount[i] ELSE p_amount[i] END
                        WHERE a.id IN (v_from, v_to);
                    END IF;
                    INSERT INTO ledger_events (transfer_id, from_user_id, to_user_id, state, posted_amount, resolved_at)
                    VALUES (v_t.id, v_t.from_user_id, v_t.to_user_id, v_t.state, v_t.posted_amount, v_t.resolved_at);
                END IF;
            END IF;
            IF outcome IS NULL OR outcome = 'INSUFFICIENT_FUNDS' THEN
                -- Either the request_id is taken (a retry, or a reuse), or funds are short: a
                -- retry of a request that succeeded must still return its transfer.
                SELECT * INTO v_t FROM transfers t
                WHERE t.initiator_id = p_initiator[i] AND t.request_id = p_request[i];
                IF FOUND THEN
                    IF (v_t.kind, v_t.two_phase, v_t.from_user_id, v_t.to_user_id, v_t.currency, v_t.amount,
                        v_t.memo, v_t.expires_at)
                       IS NOT DISTINCT FROM
                       (p_kind[i], p_two_phase[i], p_from_user[i], v_to_user[i], p_currency[i], p_amount[i],
                        p_memo[i], p_expires[i]) THEN
                        outcome := 'REPLAYED';
                    ELSE
                        outcome := 'IDEMPOTENCY_KEY_REUSED';
                    END IF;
                ELSE
                    outcome := 'INSUFFICIENT_FUNDS';
                END IF;
            END IF;
        END IF;
        IF outcome IN ('CREATED', 'REPLAYED') THEN
            id := v_t.id; request_id := v_t.request_id; kind := v_t.kind; state := v_t.state;
            from_user_id := v_t.from_user_id; to_user_id := v_t.to_user_id;
            from_account_id := v_t.from_account_id; to_account_id := v_t.to_account_id;
            currency := v_t.currency; amount := v_t.amount; posted_amount := v_t.posted_amount;
            memo := v_t.memo; created_at := v_t.created_at; expires_at := v_t.expires_at;
            resolved_at := v_t.resolved_at;
        ELSE
            id := NULL; request_id := NULL; kind := NULL; state := NULL; from_user_id := NULL;
            to_user_id := NULL; from_account_id := NULL; to_account_id := NULL; currency := NULL;
            amount := NULL; posted_amount := NULL; memo := NULL; created_at := NULL; expires_at := NULL;
            resolved_at := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;

    IF v_notify THEN
        PERFORM pg_notify('ledger_events', '');
    END IF;
END $$;

-- The hot path of ledger_create_transfers: immediate user-to-user transfers, each sent by its
-- initiator to a user named by id, with distinct (initiator, request_id) within the batch (the
-- server checks all that before choosing this function). One statement locks both accounts of every
-- item (ordered, as everywhere), and inserts, posts and logs every item that cannot fail: both
-- accounts exist, the sender's available balance covers all its items of the batch, request_id is
-- new. It returns one row per transfer it CREATED, `idx` being the item's 1-based position; it
-- writes nothing for any other item, which the caller then sends through ledger_create_transfers
-- (so the outcomes stay that function's). The reply needs only what the database chose: the
-- transfer id, both account ids and the time (the transfer is posted at creation: resolved then).
--
-- Every statement reads a handful of rows by key, and plans are generic (planned once per
-- connection): the enable_* settings keep a plan made while the tables were small from scanning or
-- hashing whole tables forever after (measured: the NOT EXISTS on transfers in
-- ledger_create_transfers became a hash of the whole table, a cost growing with every transfer).
CREATE FUNCTION ledger_transfer_batch(
    p_from     uuid[],
    p_request  uuid[],
    p_to       uuid[],
    p_currency text[],
    p_amount   bigint[],
    p_memo     text[]
) RETURNS TABLE (idx integer, id uuid, from_account_id uuid, to_account_id uuid, created_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH locked AS (
        SELECT a.id, a.user_id, a.currency, a.balance - a.pending_debit AS available
        FROM accounts a
        WHERE (a.user_id, a.currency) IN (
            SELECT * FROM unnest(p_to, p_currency) UNION SELECT * FROM unnest(p_from, p_currency))
        ORDER BY a.user_id, a.currency
        FOR UPDATE
    ), item AS (
        SELECT x.n, x.fu, x.req, x.tu, x.cur, x.amt, x.memo, f.id AS fa, t.id AS ta,
               sum(x.amt) OVER (PARTITION BY f.id) <= f.available AS covered
        FROM unnest(p_from, p_request, p_to, p_currency, p_amount, p_memo)
             WITH ORDINALITY AS x(fu, req, tu, cur, amt, memo, n)
        JOIN locked f ON f.user_id = x.fu AND f.currency = x.cur
        JOIN locked t ON t.user_id = x.tu AND t.currency = x.cur
        WHERE x.fu <> x.tu
          AND NOT EXISTS (SELECT 1 FROM transfer_resolutions r WHERE r.initiator_id = x.fu AND r.request_id = x.req)
    ), ins AS (
        INSERT INTO transfers AS t (
            initiator_id, request_id, kind, two_phase, state, from_account_id, to_account_id,
            from_user_id, to_user_id, currency, amount, posted_amount, memo, resolved_at)
        SELECT i.fu, i.req, 'transfer', false, 'posted', i.fa, i.ta, i.fu, i.tu, i.cur, i.amt, i.amt, i.memo, now()
        FROM item i WHERE i.covered
        ORDER BY i.n
        ON CONFLICT ON CONSTRAINT transfers_initiator_request_key DO NOTHING
        RETURNING t.id, t.seq, t.request_id, t.from_user_id, t.to_user_id, t.from_account_id, t.to_account_id,
                  t.amount, t.created_at
    ), moved AS (
        UPDATE accounts a SET balance = a.balance + d.delta
        FROM (
            SELECT m.acc, sum(m.delta) AS delta
            FROM (SELECT ins.from_account_id AS acc, -ins.amount AS delta FROM ins
                  UNION ALL SELECT ins.to_account_id, ins.amount FROM ins) m
            GROUP BY m.acc
        ) d
        WHERE a.id = d.acc
    ), logged AS (
        INSERT INTO ledger_events (transfer_id, from_user_id, to_user_id, state, posted_amount, resolved_at)
        SELECT ins.id, ins.from_user_id, ins.to_user_id, 'posted', ins.amount, ins.created_at
        FROM ins ORDER BY ins.seq
    )
    SELECT i.n::integer, ins.id, ins.from_account_id, ins.to_account_id, ins.created_at
    FROM ins JOIN item i ON i.fu = ins.from_user_id AND i.req = ins.request_id;
    IF FOUND THEN
        PERFORM pg_notify('ledger_events', '');
    END IF;
END $$;

-- Release the overdue reservations of one account. The caller holds the account's lock.
CREATE FUNCTION ledger_expire_account(p_account uuid) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_released bigint;
BEGIN
    WITH expired AS (
        UPDATE transfers t SET state = 'expired', resolved_at = t.expires_at
        WHERE t.from_account_id = p_account AND t.state = 'pending' AND t.expires_at <= now()
        RETURNING t.id, t.amount, t.from_user_id, t.to_user_id, t.resolved_at
    ), logged AS (
        INSERT INTO ledger_events (transfer_id, from_user_id, to_user_id, state, posted_amount, resolved_at)
        SELECT e.id, e.from_user_id, e.to_user_id, 'expired', 0, e.resolved_at FROM expired e
    )
    SELECT coalesce(sum(e.amount), 0) INTO v_released FROM expired e;
    IF v_released > 0 THEN
        UPDATE accounts SET pending_debit = pending_debit - v_released WHERE id = p_account;
        PERFORM pg_notify('ledger_events', '');
    END IF;
    RETURN v_released;
END $$;

-- Expire every overdue reservation (the server's sweeper); returns how many accounts it touched.
CREATE FUNCTION ledger_expire_due() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_account uuid;
    v_count   integer := 0;
BEGIN
    FOR v_account IN
        SELECT a.id FROM accounts a
        WHERE a.id IN (
            SELECT t.from_account_id FROM transfers t
            WHERE t.state = 'pending' AND t.expires_at <= now())
        ORDER BY a.user_id NULLS FIRST, a.currency
        FOR UPDATE OF a SKIP LOCKED
    LOOP
        PERFORM ledger_expire_account(v_account);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;

-- Post (p_action 'post', p_amount 0 = all) or void ('void') a pending transfer.
-- Outcomes: DONE, REPLAYED, IDEMPOTENCY_KEY_REUSED, NOT_FOUND, PERMISSION_DENIED,
-- TRANSFER_NOT_PENDING, TRANSFER_EXPIRED, AMOUNT_TOO_LARGE; with the transfer as it is after
-- (columns as ledger_create_transfers, without idx).
CREATE FUNCTION ledger_resolve_pending(
    p_initiator uuid, p_request uuid, p_transfer uuid, p_action text, p_amount bigint
) RETURNS TABLE (
    outcome         text,
    id              uuid,
    request_id      uuid,
    kind            text,
    state           text,
    from_user_id    uuid,
    to_user_id      uuid,
    from_account_id uuid,
    to_account_id   uuid,
    currency        text,
    amount          bigint,
    posted_amount   bigint,
    memo            text,
    created_at      timestamptz,
    expires_at      timestamptz,
    resolved_at     timestamptz
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_t       transfers;
    v_r       transfer_resolutions;
    v_amount  bigint;
    v_outcome text;
BEGIN
    <<decide>>
    BEGIN
        SELECT * INTO v_r FROM transfer_resolutions r
        WHERE r.initiator_id = p_initiator AND r.request_id = p_request;
        IF FOUND THEN
            SELECT * INTO v_t FROM transfers t WHERE t.id = v_r.transfer_id;
            v_outcome := CASE WHEN (v_r.transfer_id, v_r.action, v_r.requested_amount)
                                   = (p_transfer, p_action, p_amount)
                              THEN 'REPLAYED' ELSE 'IDEMPOTENCY_KEY_REUSED' END;
            EXIT decide;
        END IF;
        IF EXISTS (SELECT 1 FROM transfers t WHERE t.initiator_id = p_initiator AND t.request_id = p_request) THEN
            v_outcome := 'IDEMPOTENCY_KEY_REUSED';
            EXIT decide;
        END IF;

        SELECT * INTO v_t FROM transfers t WHERE t.id = p_transfer;
        IF NOT FOUND OR (p_initiator IS DISTINCT FROM v_t.from_user_id
                         AND p_initiator IS DISTINCT FROM v_t.to_user_id) THEN
            v_t := NULL;
            v_outcome := 'NOT_FOUND';
            EXIT decide;
        END IF;
        IF p_action = 'post' AND p_initiator IS DISTINCT FROM v_t.from_user_id THEN
            v_outcome := 'PERMISSION_DENIED';
            EXIT decide;
        END IF;

        PERFORM 1 FROM accounts a WHERE a.id IN (v_t.from_account_id, v_t.to_account_id)
        ORDER BY a.user_id NULLS FIRST, a.currency FOR UPDATE;
        SELECT * INTO v_t FROM transfers t WHERE t.id = p_transfer FOR UPDATE;

        IF v_t.state = 'pending' AND v_t.expires_at <= now() THEN
            PERFORM ledger_expire_account(v_t.from_account_id);
            SELECT * INTO v_t FROM transfers t WHERE t.id = p_transfer;
        END IF;
        IF v_t.state <> 'pending' THEN
            v_outcome := CASE WHEN v_t.state = 'expired' AND p_action = 'post'
                              THEN 'TRANSFER_EXPIRED' ELSE 'TRANSFER_NOT_PENDING' END;
            EXIT decide;
        END IF;

        v_amount := CASE WHEN p_amount = 0 THEN v_t.amount ELSE p_amount END;
        IF p_action = 'post' AND v_amount > v_t.amount THEN
            v_outcome := 'AMOUNT_TOO_LARGE';
            EXIT decide;
        END IF;

        IF p_action = 'post' THEN
            UPDATE transfers t SET state = 'posted', posted_amount = v_amount, resolved_at = now()
            WHERE t.id = p_transfer RETURNING t.* INTO v_t;
            UPDATE accounts a
            SET balance = a.balance + CASE WHEN a.id = v_t.from_account_id THEN -v_amount ELSE v_amount END,
                pending_debit = a.pending_debit
                    - CASE WHEN a.id = v_t.from_account_id THEN v_t.amount ELSE 0 END
            WHERE a.id IN (v_t.from_account_id, v_t.to_account_id);
        ELSE
            UPDATE transfers t SET state = 'voided', resolved_at = now()
            WHERE t.id = p_transfer RETURNING t.* INTO v_t;
            UPDATE accounts a SET pending_debit = a.pending_debit - v_t.amount WHERE a.id = v_t.from_account_id;
        END IF;
        INSERT INTO transfer_resolutions (initiator_id, request_id, transfer_id, action, requested_amount)
        VALUES (p_initiator, p_request, p_transfer, p_action, p_amount);
        INSERT INTO ledger_events (transfer_id, from_user_id, to_user_id, state, posted_amount, resolved_at)
        VALUES (v_t.id, v_t.from_user_id, v_t.to_user_id, v_t.state, v_t.posted_amount, v_t.resolved_at);
        PERFORM pg_notify('ledger_events', '');
        v_outcome := 'DONE';
    END;
    RETURN QUERY SELECT v_outcome, v_t.id, v_t.request_id, v_t.kind, v_t.state, v_t.from_user_id,
        v_t.to_user_id, v_t.from_account_id, v_t.to_account_id, v_t.currency, v_t.amount,
        v_t.posted_amount, v_t.memo, v_t.created_at, v_t.expires_at, v_t.resolved_at;
END $$;
