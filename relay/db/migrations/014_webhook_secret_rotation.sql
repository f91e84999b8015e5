-- Rotating a webhook endpoint's signing secret (POST /api/webhooks/{id}/rotate-secret,
-- relay webhooks rotate-secret): the secret it replaced keeps signing, beside the new one,
-- until previous_secret_expires_at, so a receiver can switch at its own pace
-- (docs/webhooks.md, "Rotating the secret").

ALTER TABLE webhook_endpoints
    -- The secret the last rotation replaced, sealed as secret_sealed is (the same state key,
    -- the endpoint's id as associated data: it is that column's value, moved). Only one is
    -- kept: a rotation during an overlap drops the older one.
    ADD COLUMN previous_secret_sealed     BYTEA,
    -- Until when deliveries carry its signature too (by the database's clock).
    ADD COLUMN previous_secret_expires_at TIMESTAMPTZ,
    ADD COLUMN secret_rotated_at          TIMESTAMPTZ,
    ADD CONSTRAINT webhook_endpoints_previous_secret
        CHECK ((previous_secret_sealed IS NULL) = (previous_secret_expires_at IS NULL));
