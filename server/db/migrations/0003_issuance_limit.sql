-- A currency's issuance (money in circulation: minus its system account's balance) stays within
-- 2^63 - 1 minor units, so it fits the int64 fields that report it (AuditLedger's issued_minor).
-- A deposit past the limit is refused (ISSUANCE_LIMIT, server/db/functions/ledger_create.sql);
-- before, it failed on the bigint's range, and one reaching exactly 2^63 was stored and broke
-- the audit's reply.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM accounts WHERE user_id IS NULL AND balance < -9223372036854775807) THEN
        RAISE EXCEPTION 'a system account holds -2^63: its currency issued more than int64 can report'
            USING HINT = 'withdraw one minor unit of that currency with the previous release, then migrate';
    END IF;
END $$;
ALTER TABLE accounts ADD CONSTRAINT accounts_issuance_within_int64
    CHECK (user_id IS NOT NULL OR balance >= -9223372036854775807);
