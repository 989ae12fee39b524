-- A currency's issuance (money in circulation: minus its system account's balance) stays within
-- 2^63 - 1 minor units, so it fits the int64 fields that report it (AuditLedger's issued_minor).
-- A deposit past the limit is refused (ISSUANCE_LIMIT, server/db/functions/ledger_create.sql);
-- before, it failed on the bigint's range, and one reaching exactly 2^63 was stored and broke
-- the audit's reply.
ALTER TABLE accounts ADD CONSTRAINT accounts_issuance_within_int64
    CHECK (user_id IS NOT NULL OR balance >= -9223372036854775807);
