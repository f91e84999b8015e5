-- Whose claim an Idempotency-Key is (relay.web.idempotency): each request that claims a key,
-- or takes over a stale claim, writes a token of its own. Storing the answer and releasing
-- the claim both match that token, so a request whose claim was taken over (it ran past
-- the staleness) can neither overwrite the new owner's answer nor delete its claim; and a
-- claim whose commit landed with its reply lost is recognised as its own when retried.
-- Rows written before this migration have none: they match no request's token.
ALTER TABLE idempotency_keys ADD COLUMN claim_token TEXT;
