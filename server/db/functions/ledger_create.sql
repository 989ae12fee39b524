-- Creating transfers: ledger_create_transfers for every kind and outcome, and ledger_transfer_batch,
-- the lean hot path for plain user-to-user transfers. Two functions on purpose: the lean one is a
-- single set-based statement with no per-item branching, and carries most of the traffic (measured
-- in bench/README.md); whatever it cannot create (a retry, short funds, a missing account, a
-- refused id) goes through ledger_create_transfers, which alone decides outcomes.
-- Request keys are locked first (server/db/functions/requests.sql), then accounts in
-- (user_id NULLS FIRST, currency) order, so concurrent calls cannot deadlock.

-- Create many transfers (immediate or pending, user, deposit or withdrawal) in one statement,
-- each with its own outcome and, when CREATED or REPLAYED, the transfer. A NULL p_from_user / p_to_user with no username is the system
-- account; a username names the party instead of an id. p_fingerprint (optional) is the caller's
-- description of each request, recorded with a refusal (chat payments pass their own; the
-- default describes the transfer asked for). Returns one row per item, `idx` being its 1-based
-- position (rows are not in idx order).
--
-- Outcomes: CREATED, REPLAYED (same initiator and request_id, same body: the first transfer is
-- returned; a transfer chat wrote for that key is another request's), IDEMPOTENCY_KEY_REUSED, the
-- refusals INSUFFICIENT_FUNDS, ISSUANCE_LIMIT (a deposit past a currency's 2^63 - 1 minor units in
-- circulation), RECIPIENT_NOT_FOUND, SOURCE_NOT_FOUND (recorded: a retry gets them again), and the
-- invalid arguments SELF_TRANSFER and
-- EXPIRY_PASSED (not recorded; an expiry is compared with now only for a request with no answer
-- yet, so a retry after it passed still gets the first answer). Decisions are checks, not exceptions, so one bad item never fails the others.
--
-- The items of a batch are concurrent requests, so any order of them is a valid serial order.
-- The fast path handles, set-based in a few statements, every item that cannot fail: both
-- accounts exist, request_id is new (and unique in the batch), and the sender holds enough for
-- all its items of the batch together. The rest go one by one through the slow path.
CREATE OR REPLACE FUNCTION ledger_create_transfers(
    p_initiator     uuid[],
    p_request       uuid[],
    p_kind          text[],
    p_two_phase     boolean[],
    p_from_user     uuid[],
    p_from_username text[],
    p_to_user       uuid[],
    p_to_username   text[],
    p_currency      text[],
    p_amount        bigint[],
    p_memo          text[],
    p_expires       timestamptz[],
    p_fingerprint   text[] DEFAULT NULL
) RETURNS TABLE (idx integer, outcome text, transfer transfers)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n           integer := cardinality(p_request);
    v_from_user uuid[] := p_from_user;
    v_to_user   uuid[] := p_to_user;
    v_from_acc  uuid[];
    v_to_acc    uuid[];
    v_fast      boolean[];
    v_done      integer[] := '{}';
    v_from      uuid;
    v_to        uuid;
    v_avail     bigint;
    v_t         transfers;
    v_fp        text;
    v_notify    boolean := false;
    i           integer;
BEGIN
    PERFORM request_lock(p_initiator, p_request);

    -- Parties named by username.
    IF EXISTS (SELECT 1 FROM unnest(p_to_username) AS u(name) WHERE name IS NOT NULL) THEN
        SELECT array_agg(coalesce(r.to_user, u.id) ORDER BY r.n) INTO v_to_user
        FROM unnest(v_to_user, p_to_username) WITH ORDINALITY AS r(to_user, name, n)
        LEFT JOIN users u ON u.username = r.name;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_from_username) AS u(name) WHERE name IS NOT NULL) THEN
        SELECT array_agg(coalesce(r.from_user, u.id) ORDER BY r.n) INTO v_from_user
        FROM unnest(v_from_user, p_from_username) WITH ORDINALITY AS r(from_user, name, n)
        LEFT JOIN users u ON u.username = r.name;
    END IF;

    -- Lock every account of the batch, in one ordered pass. Usually they all exist: then a plain
    -- SELECT ... FOR UPDATE does it. Otherwise a missing credit-side account is opened in the same
    -- ordered pass (ON CONFLICT DO UPDATE ... WHERE false locks an existing row without writing)
    -- when its payer can pay everything the batch asks of it there, so that a refused transfer
    -- opens nothing (short of a race with a spend committed while this statement waits). An item
    -- whose recipient was left out and that can be paid after all (money arrived, or only some of
    -- the payer's items fit) opens the account in the slow path, and an account another
    -- transaction opened meanwhile is locked by its update: out of the usual order, so a deadlock
    -- is possible there, and is a conflict (each request is then retried alone). A debit-side
    -- user account that does not exist is left alone: that item has no funds. The system account
    -- takes part only as the source of a deposit or the sink of a withdrawal.
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
            SELECT * FROM unnest(v_to_user, p_currency) UNION SELECT * FROM unnest(v_from_user, p_currency))
        ORDER BY a.user_id, a.currency
        FOR UPDATE;
    ELSE
        INSERT INTO accounts AS a (user_id, currency)
        SELECT k.user_id, k.currency
        FROM (
            SELECT DISTINCT x.user_id, x.currency
            FROM (
                -- payer_total: all the batch asks of that payer in that currency (NULL: the system).
                SELECT c.user_id, c.currency, c.kind, true AS credit, c.payer,
                       sum(c.amount) OVER (PARTITION BY c.payer, c.currency) AS payer_total,
                       c.ini, c.req, c.exp
                FROM unnest(v_to_user, p_currency, p_kind, v_from_user, p_amount, p_initiator, p_request, p_expires)
                     AS c(user_id, currency, kind, payer, amount, ini, req, exp)
                UNION ALL
                SELECT d.user_id, d.currency, d.kind, false, NULL, NULL, NULL, NULL, NULL
                FROM unnest(v_from_user, p_currency, p_kind) AS d(user_id, currency, kind)
            ) x
            WHERE CASE
                WHEN x.user_id IS NULL THEN x.kind = CASE WHEN x.credit THEN 'withdrawal' ELSE 'deposit' END
                WHEN x.credit THEN EXISTS (SELECT 1 FROM users u WHERE u.id = x.user_id)
                    AND (EXISTS (SELECT 1 FROM accounts e WHERE e.user_id = x.user_id AND e.currency = x.currency)
                         -- Opened only for a request with no answer yet (not a retry, a reused key or an
                         -- expiry already past), whose payer covers the batch:
                         OR ((x.exp IS NULL OR x.exp > now())
                             AND NOT request_used_by_ledger(x.ini, x.req)
                             AND NOT request_used_by_chat(x.ini, x.req)
                             AND NOT EXISTS (SELECT 1 FROM request_refusals r
                                             WHERE r.initiator_id = x.ini AND r.request_id = x.req)
                             AND (x.kind = 'deposit' AND EXISTS (
                                     SELECT 1 FROM accounts s WHERE s.user_id IS NULL AND s.currency = x.currency
                                     AND s.balance + 9223372036854775807 >= x.payer_total)
                                  OR x.kind <> 'deposit' AND EXISTS (
                                     SELECT 1 FROM accounts s WHERE s.user_id = x.payer AND s.currency = x.currency
                                     AND s.balance - s.pending_debit >= x.payer_total))))
                ELSE EXISTS (SELECT 1 FROM accounts e WHERE e.user_id = x.user_id AND e.currency = x.currency)
            END
        ) k
        ORDER BY k.user_id NULLS FIRST, k.currency
        ON CONFLICT ON CONSTRAINT accounts_owner_currency_key DO UPDATE SET balance = a.balance WHERE false;
    END IF;

    -- Both accounts of every item, and whether the item can take the fast path.
    SELECT array_agg(c.from_acc ORDER BY c.n), array_agg(c.to_acc ORDER BY c.n),
           array_agg(c.candidate AND c.batch_total <= c.available ORDER BY c.n)
    INTO v_from_acc, v_to_acc, v_fast
    FROM (
        SELECT b.*, sum(CASE WHEN b.candidate THEN b.amt ELSE 0 END) OVER (PARTITION BY b.from_acc) AS batch_total
        FROM (
            SELECT x.n, x.amt,
                   coalesce(fu.id, fs.id) AS from_acc, coalesce(tu.id, ts.id) AS to_acc,
                   -- What the source can give: a user's available balance; the system account's
                   -- room before the currency's issuance reaches the limit (its balance >= -(2^63 - 1)).
                   coalesce(fu.balance - fu.pending_debit, fs.balance + 9223372036854775807, 0) AS available,
                   coalesce(fu.id, fs.id) IS NOT NULL AND coalesce(tu.id, ts.id) IS NOT NULL
                   AND coalesce(fu.id, fs.id) <> coalesce(tu.id, ts.id)
                   AND count(*) OVER (PARTITION BY x.ini, x.req) = 1
                   AND dup.id IS NULL AND res.transfer_id IS NULL AND ref.request_id IS NULL
                   AND msg.request_id IS NULL AND (x.exp IS NULL OR x.exp > now())
                   AS candidate
            FROM unnest(p_initiator, p_request, p_kind, v_from_user, v_to_user, p_currency, p_amount, p_expires)
                 WITH ORDINALITY AS x(ini, req, kind, fu, tu, cur, amt, exp, n)
            -- Joins, not NOT EXISTS: a generic plan may turn those into a hash of the whole table.
            LEFT JOIN transfers dup ON dup.initiator_id = x.ini AND dup.request_id = x.req
            LEFT JOIN transfer_resolutions res ON res.initiator_id = x.ini AND res.request_id = x.req
            LEFT JOIN request_refusals ref ON ref.initiator_id = x.ini AND ref.request_id = x.req
            LEFT JOIN messages msg ON msg.sender_id = x.ini AND msg.request_id = x.req
            LEFT JOIN accounts fu ON x.kind <> 'deposit' AND fu.user_id = x.fu AND fu.currency = x.cur
            LEFT JOIN accounts fs ON x.kind = 'deposit' AND fs.user_id IS NULL AND fs.currency = x.cur
            LEFT JOIN accounts tu ON x.kind <> 'withdrawal' AND tu.user_id = x.tu AND tu.currency = x.cur
            LEFT JOIN accounts ts ON x.kind = 'withdrawal' AND ts.user_id IS NULL AND ts.currency = x.cur
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
            FROM unnest(p_initiator, p_request, p_kind, p_two_phase, v_from_user, v_to_user, p_currency,
                        p_amount, p_memo, p_expires)
                 WITH ORDINALITY AS x(ini, req, kind, two, fu, tu, cur, amt, memo, exp, n)
            WHERE v_fast[x.n]
            ORDER BY x.n
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
        SELECT x.n::integer, 'CREATED'::text, ROW(ins.*)::transfers
        FROM ins JOIN unnest(p_initiator, p_request) WITH ORDINALITY AS x(ini, req, n)
             ON ins.initiator_id = x.ini AND ins.request_id = x.req;
        v_notify := true;
        -- Under the request locks nothing else can take these ids: every fast item was created.
        SELECT coalesce(array_agg(f.n), '{}') INTO v_done
        FROM unnest(v_fast) WITH ORDINALITY AS f(fast, n) WHERE f.fast;
    END IF;

    -- The slow path, one item at a time, in order.
    FOR i IN 1 .. n LOOP
        CONTINUE WHEN i = ANY (v_done);
        idx := i;
        outcome := NULL;
        v_from := v_from_acc[i];
        v_to := v_to_acc[i];
        -- An earlier answer for this request_id (an earlier item of this batch included).
        SELECT * INTO v_t FROM transfers t WHERE t.initiator_id = p_initiator[i] AND t.request_id = p_request[i];
        IF FOUND THEN
            outcome := CASE
                WHEN request_used_by_chat(p_initiator[i], p_request[i]) THEN 'IDEMPOTENCY_KEY_REUSED'
                WHEN (v_t.kind, v_t.two_phase, v_t.from_user_id, v_t.to_user_id, v_t.currency, v_t.amount,
                      v_t.memo, v_t.expires_at)
                     IS NOT DISTINCT FROM
                     (p_kind[i], p_two_phase[i], v_from_user[i], v_to_user[i], p_currency[i], p_amount[i],
                      p_memo[i], p_expires[i])
                THEN 'REPLAYED' ELSE 'IDEMPOTENCY_KEY_REUSED' END;
        ELSIF EXISTS (SELECT 1 FROM transfer_resolutions r
                      WHERE r.initiator_id = p_initiator[i] AND r.request_id = p_request[i])
              OR request_used_by_chat(p_initiator[i], p_request[i]) THEN
            outcome := 'IDEMPOTENCY_KEY_REUSED';  -- the request_id of a post or void, or of chat
        ELSE
            v_fp := coalesce(p_fingerprint[i], jsonb_build_array(
                'create', p_kind[i], p_two_phase[i], p_from_user[i], p_from_username[i], p_to_user[i],
                p_to_username[i], p_currency[i], p_amount[i], p_memo[i], extract(epoch FROM p_expires[i]))::text);
            SELECT r.outcome INTO outcome FROM request_prior_refusal(p_initiator[i], p_request[i], v_fp) r;
            IF outcome IS NULL THEN
                -- Decide, now, once.
                IF p_expires[i] <= now() THEN
                    outcome := 'EXPIRY_PASSED';  -- an invalid argument, checked here so a retry gets its answer
                ELSIF p_kind[i] = 'withdrawal' AND (v_from_user[i] IS NULL
                        OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = v_from_user[i])) THEN
                    outcome := 'SOURCE_NOT_FOUND';
                ELSIF v_to IS NULL AND (p_kind[i] = 'withdrawal'
                        OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = v_to_user[i])) THEN
                    outcome := 'RECIPIENT_NOT_FOUND';
                ELSIF p_kind[i] = 'transfer' AND v_to_user[i] = v_from_user[i] THEN
                    outcome := 'SELF_TRANSFER';
                ELSIF p_kind[i] = 'deposit' THEN
                    SELECT a.balance INTO v_avail FROM accounts a WHERE a.id = v_from;
                    IF v_avail < p_amount[i] - 9223372036854775807 THEN
                        outcome := 'ISSUANCE_LIMIT';
                    END IF;
                ELSE
                    SELECT a.balance - a.pending_debit INTO v_avail FROM accounts a WHERE a.id = v_from;
                    IF v_from IS NOT NULL AND v_avail < p_amount[i] THEN
                        -- Overdue reservations no longer hold money back: release them, look again.
                        PERFORM ledger_expire_account(v_from);
                        SELECT a.balance - a.pending_debit INTO v_avail FROM accounts a WHERE a.id = v_from;
                    END IF;
                    IF v_from IS NULL OR v_avail < p_amount[i] THEN
                        outcome := 'INSUFFICIENT_FUNDS';
                    END IF;
                END IF;
                IF outcome IS NULL AND v_to IS NULL THEN
                    -- The ordered pass left the recipient's account unopened, and the item can be
                    -- paid after all: opened now, out of the usual order (see the ordered pass).
                    INSERT INTO accounts AS a (user_id, currency) VALUES (v_to_user[i], p_currency[i])
                    ON CONFLICT ON CONSTRAINT accounts_owner_currency_key DO UPDATE SET balance = a.balance WHERE false;
                    SELECT a.id INTO v_to FROM accounts a
                    WHERE a.user_id = v_to_user[i] AND a.currency = p_currency[i];
                END IF;
                IF outcome IS NULL THEN
                    INSERT INTO transfers AS t (
                        initiator_id, request_id, kind, two_phase, state, from_account_id, to_account_id,
                        from_user_id, to_user_id, currency, amount, posted_amount, memo, expires_at, resolved_at)
                    VALUES (
                        p_initiator[i], p_request[i], p_kind[i], p_two_phase[i],
                        CASE WHEN p_two_phase[i] THEN 'pending' ELSE 'posted' END,
                        v_from, v_to, v_from_user[i], v_to_user[i], p_currency[i], p_amount[i],
                        CASE WHEN p_two_phase[i] THEN 0 ELSE p_amount[i] END, p_memo[i], p_expires[i],
                        CASE WHEN p_two_phase[i] THEN NULL ELSE now() END)
                    RETURNING t.* INTO v_t;
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
                ELSIF outcome NOT IN ('SELF_TRANSFER', 'EXPIRY_PASSED') THEN
                    PERFORM request_refuse(p_initiator[i], p_request[i], v_fp, outcome);
                END IF;
            END IF;
        END IF;
        transfer := CASE WHEN outcome IN ('CREATED', 'REPLAYED') THEN v_t END;
        RETURN NEXT;
    END LOOP;

    IF v_notify THEN
        PERFORM pg_notify('ledger_events', '');
    END IF;
END $$;

-- The hot path of ledger_create_transfers: immediate user-to-user transfers, each sent by its
-- initiator to a user named by id, with distinct (initiator, request_id) within the batch (the
-- server checks all that before choosing this function). After locking the request keys, one
-- statement locks both accounts of every item (ordered, as everywhere), and inserts, posts and
-- logs every item that cannot fail: both accounts exist, the sender's available balance covers
-- all its items of the batch, request_id has no answer yet. It returns one row per transfer it
-- CREATED, `idx` being the item's 1-based position; it writes nothing for any other item, which
-- the caller then sends through ledger_create_transfers (so the outcomes stay that function's).
-- (Three statements, one round trip.)
-- The reply needs only what the database chose: the transfer id, both account ids and the time
-- (the transfer is posted at creation: resolved then).
CREATE OR REPLACE FUNCTION ledger_transfer_batch(
    p_from     uuid[],
    p_request  uuid[],
    p_to       uuid[],
    p_currency text[],
    p_amount   bigint[],
    p_memo     text[]
) RETURNS TABLE (idx integer, id uuid, from_account_id uuid, to_account_id uuid, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- Keys, then accounts, each in a statement of its own: the statement below then sees whatever
    -- a holder of these locks committed (a lock taken inside it would leave it an older snapshot,
    -- and an update there would be checked against a balance that is no longer the account's).
    PERFORM request_lock(p_from, p_request);
    PERFORM 1 FROM accounts a
    WHERE (a.user_id, a.currency) IN (
        SELECT * FROM unnest(p_to, p_currency) UNION SELECT * FROM unnest(p_from, p_currency))
    ORDER BY a.user_id, a.currency
    FOR UPDATE;
    RETURN QUERY
    WITH locked AS (
        SELECT a.id, a.user_id, a.currency, a.balance - a.pending_debit AS available
        FROM accounts a
        WHERE (a.user_id, a.currency) IN (
            SELECT * FROM unnest(p_to, p_currency) UNION SELECT * FROM unnest(p_from, p_currency))
    ), item AS (
        SELECT x.n, x.fu, x.req, x.tu, x.cur, x.amt, x.memo, f.id AS fa, t.id AS ta,
               sum(x.amt) OVER (PARTITION BY f.id) <= f.available AS covered
        FROM unnest(p_from, p_request, p_to, p_currency, p_amount, p_memo)
             WITH ORDINALITY AS x(fu, req, tu, cur, amt, memo, n)
        JOIN locked f ON f.user_id = x.fu AND f.currency = x.cur
        JOIN locked t ON t.user_id = x.tu AND t.currency = x.cur
        WHERE x.fu <> x.tu
          AND NOT EXISTS (SELECT 1 FROM transfer_resolutions r WHERE r.initiator_id = x.fu AND r.request_id = x.req)
          AND NOT EXISTS (SELECT 1 FROM request_refusals r WHERE r.initiator_id = x.fu AND r.request_id = x.req)
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.sender_id = x.fu AND m.request_id = x.req)
    ), ins AS (
        INSERT INTO transfers AS t (
            initiator_id, request_id, kind, two_phase, state, from_account_id, to_account_id,
            from_user_id, to_user_id, currency, amount, posted_amount, memo, resolved_at)
        SELECT i.fu, i.req, 'transfer', false, 'posted', i.fa, i.ta, i.fu, i.tu, i.cur, i.amt, i.amt, i.memo, now()
        FROM item i WHERE i.covered
        ORDER BY i.n
        -- A retry of a created transfer: nothing written, the caller asks ledger_create_transfers.
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

-- How both functions plan. Their statements take arrays, so custom plans would be re-planned on
-- every call for no gain: a generic plan is made once per connection, often while the tables are
-- small, and every statement reads a handful of rows by key. The enable_* settings keep such a
-- plan from scanning or hashing whole tables forever after (measured: a NOT EXISTS on transfers
-- became a hash of the whole table, a cost growing with every transfer).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.proname IN ('ledger_create_transfers', 'ledger_transfer_batch')
               AND p.pronamespace = 'public'::regnamespace LOOP
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan SET enable_seqscan = off'
                       ' SET enable_hashjoin = off SET enable_mergejoin = off SET enable_bitmapscan = off', f);
    END LOOP;
END $$;
