-- Users hold opaque bearer tokens; only the SHA-256 (hex) of a token is stored.
CREATE TABLE users (
    id                BIGSERIAL PRIMARY KEY,
    email             TEXT NOT NULL UNIQUE,
    token_hash        TEXT NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    active            BOOLEAN NOT NULL DEFAULT TRUE,
    remaining_seconds INTEGER NOT NULL DEFAULT 1800 CHECK (remaining_seconds >= 0),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at        TIMESTAMPTZ
);

CREATE TABLE interview_sessions (
    id                  TEXT PRIMARY KEY,
    user_id             BIGINT NOT NULL REFERENCES users (id),
    request_id          TEXT NOT NULL,
    state               TEXT NOT NULL
                        CHECK (state IN ('pending', 'connecting', 'active', 'ended', 'failed')),
    model               TEXT NOT NULL,
    dialect             TEXT NOT NULL,
    upstream_session_id TEXT,
    upstream_call_id    TEXT,
    relay_instance      TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at          TIMESTAMPTZ NOT NULL,
    connected_at        TIMESTAMPTZ,
    ended_at            TIMESTAMPTZ,
    end_reason          TEXT,
    duration_seconds    DOUBLE PRECISION,
    debited_seconds     INTEGER
);

CREATE INDEX interview_sessions_user ON interview_sessions (user_id, created_at DESC);
-- Live rows per instance: what start-up recovery closes after a crash.
CREATE INDEX interview_sessions_live ON interview_sessions (relay_instance)
    WHERE state IN ('pending', 'connecting', 'active');

CREATE TABLE recordings (
    id               TEXT PRIMARY KEY,
    session_id       TEXT NOT NULL REFERENCES interview_sessions (id),
    files            JSONB NOT NULL DEFAULT '[]'::jsonb,
    duration_seconds DOUBLE PRECISION,
    bytes            BIGINT,
    sha256           TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at       TIMESTAMPTZ
);
