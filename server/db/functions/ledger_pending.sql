-- Two-phase transfers after their creation: expiry, post and void.

-- Release the overdue reservations of one account. The caller holds the account's lock.
CREATE OR REPLACE FUNCTION ledger_expire_account(p_account uuid) RETURNS bigint LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION ledger_expire_due() RETURNS integer LANGUAGE plpgsql AS $$
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
-- Outcomes: DONE, REPLAYED, IDEMPOTENCY_KEY_REUSED, AMOUNT_TOO_LARGE (an invalid argument, not
-- recorded), and the refusals NOT_FOUND, PERMISSION_DENIED, TRANSFER_NOT_PENDING, TRANSFER_EXPIRED
-- (recorded: a retry gets the same refusal, server/db/functions/requests.sql); with the transfer
-- as it is after, or, on a refusal that names one, the state it names.
CREATE OR REPLACE FUNCTION ledger_resolve_pending(
    p_initiator uuid, p_request uuid, p_transfer uuid, p_action text, p_amount bigint
) RETURNS TABLE (outcome text, named_state text, transfer transfers)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_t       transfers;
    v_r       transfer_resolutions;
    v_amount  bigint;
    v_outcome text;
    v_state   text;
    v_fp      text := jsonb_build_array('resolve', p_transfer, p_action, p_amount)::text;
BEGIN
    PERFORM request_lock(ARRAY[p_initiator], ARRAY[p_request]);
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
        IF EXISTS (SELECT 1 FROM transfers t WHERE t.initiator_id = p_initiator AND t.request_id = p_request)
           OR request_used_by_chat(p_initiator, p_request) THEN
            v_outcome := 'IDEMPOTENCY_KEY_REUSED';
            EXIT decide;
        END IF;
        SELECT r.outcome, r.state INTO v_outcome, v_state FROM request_prior_refusal(p_initiator, p_request, v_fp) r;
        IF v_outcome IS NOT NULL THEN
            EXIT decide;
        END IF;

        SELECT * INTO v_t FROM transfers t WHERE t.id = p_transfer;
        IF NOT FOUND OR (p_initiator IS DISTINCT FROM v_t.from_user_id
                         AND p_initiator IS DISTINCT FROM v_t.to_user_id) THEN
            v_t := NULL;
            v_outcome := 'NOT_FOUND';
            PERFORM request_refuse(p_initiator, p_request, v_fp, v_outcome);
            EXIT decide;
        END IF;
        IF p_action = 'post' AND p_initiator IS DISTINCT FROM v_t.from_user_id THEN
            v_outcome := 'PERMISSION_DENIED';
            PERFORM request_refuse(p_initiator, p_request, v_fp, v_outcome);
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
            v_state := v_t.state;
            PERFORM request_refuse(p_initiator, p_request, v_fp, v_outcome, v_state);
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
    RETURN QUERY SELECT v_outcome, v_state, CASE WHEN v_outcome IN ('DONE', 'REPLAYED') THEN v_t END;
END $$;
