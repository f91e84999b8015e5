-- The relay's own client secrets (ek_…) of the OpenAI-compatible candidate endpoints
-- (docs/openai-compatible.md): POST /v1/realtime/client_secrets admits a candidate and
-- creates a pending session; its ek_ opens that one session's call (POST /v1/realtime/calls)
-- until expires_at, and hangs that call up while it lasts. Stored as SHA-256 only.
CREATE TABLE realtime_client_secrets (
    secret_hash     TEXT PRIMARY KEY CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
    session_id      TEXT NOT NULL UNIQUE REFERENCES interview_sessions (id) ON DELETE CASCADE,
    -- SHA-256 of the candidate's credential that asked for it (a user token or an
    -- interview's invite): the call authenticates that credential again, so a user revoked
    -- or an interview closed since cannot start the call.
    credential_hash TEXT NOT NULL,
    invite          BOOLEAN NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Housekeeping deletes the secrets of ended sessions once expired.
CREATE INDEX realtime_client_secrets_expires ON realtime_client_secrets (expires_at);
