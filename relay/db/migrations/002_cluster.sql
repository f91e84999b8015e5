-- Shared pending-session state: what any relay needs to exchange a session another one
-- created. The upstream's ephemeral secret is stored encrypted (AES-GCM, relay.cluster.
-- sealing), never in clear; the claim (pending → connecting) is one conditional UPDATE.
ALTER TABLE interview_sessions
    ADD COLUMN max_duration_s    DOUBLE PRECISION,
    ADD COLUMN minted_sealed     BYTEA,
    ADD COLUMN minted_expires_at BIGINT,
    ADD COLUMN minted_model      TEXT;

-- Live members of the cluster (instances and workers), refreshed by a heartbeat.
CREATE TABLE relay_members (
    id           TEXT PRIMARY KEY,
    address      TEXT NOT NULL,
    version      TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    draining     BOOLEAN NOT NULL DEFAULT FALSE,
    live         INTEGER NOT NULL DEFAULT 0,
    load         DOUBLE PRECISION NOT NULL DEFAULT 0,
    sessions     JSONB NOT NULL DEFAULT '[]'::jsonb
);
