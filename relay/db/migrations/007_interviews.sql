-- Interviews (relay/interviews): one candidate's interview with its own interviewer
-- (instructions, voice, language), its budget of seconds, whether it is recorded, and
-- its candidate link's invite token (stored as a SHA-256 only). The candidate is a users
-- row (found or created by e-mail); sessions started with the invite name the interview.
CREATE TABLE interviews (
    id                TEXT PRIMARY KEY CHECK (id ~ '^iv_[0-9a-f]{32}$'),
    user_id           BIGINT NOT NULL REFERENCES users (id),
    invite_token_hash TEXT NOT NULL UNIQUE CHECK (invite_token_hash ~ '^[0-9a-f]{64}$'),
    candidate_name    TEXT,
    instructions      TEXT NOT NULL,
    voice             TEXT,
    language          TEXT,
    max_duration_s    INTEGER NOT NULL CHECK (max_duration_s > 0),
    recording         BOOLEAN NOT NULL DEFAULT TRUE,
    metadata          JSONB NOT NULL DEFAULT '{}'::jsonb,
    expires_at        TIMESTAMPTZ NOT NULL,
    status            TEXT NOT NULL DEFAULT 'scheduled'
                      CHECK (status IN ('scheduled', 'in_progress', 'completed', 'expired',
                                        'cancelled', 'failed')),
    end_reason        TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at        TIMESTAMPTZ,
    ended_at          TIMESTAMPTZ,
    -- Who created it: an API key's id, "operator" or "cli".
    created_by        TEXT NOT NULL
);

CREATE INDEX interviews_created ON interviews (created_at DESC, id DESC);
CREATE INDEX interviews_user ON interviews (user_id, created_at DESC);
-- What housekeeping looks at: interviews that may still expire or fail.
CREATE INDEX interviews_open ON interviews (expires_at)
    WHERE status IN ('scheduled', 'in_progress');

ALTER TABLE interview_sessions ADD COLUMN interview_id TEXT REFERENCES interviews (id);
CREATE INDEX interview_sessions_interview ON interview_sessions (interview_id, created_at DESC)
    WHERE interview_id IS NOT NULL;
CREATE INDEX interview_sessions_created ON interview_sessions (created_at DESC, id DESC);
CREATE INDEX users_created ON users (created_at DESC, id DESC);

-- API keys of the management API (relay/admission/api_keys.py): SHA-256 of the key only.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY CHECK (id ~ '^key_[0-9a-f]{16}$'),
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('admin', 'read')),
    key_hash     TEXT NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    created_by   TEXT NOT NULL
);

CREATE INDEX api_keys_created ON api_keys (created_at DESC, id DESC);

-- Idempotency-Key of POST requests (relay/web/idempotency.py): the first request's
-- fingerprint and, once it succeeded, its answer, sealed (it can hold a credential shown
-- once, such as an interview's candidate link); kept 24 hours.
CREATE TABLE idempotency_keys (
    principal       TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('in_progress', 'done')),
    response_status INTEGER,
    response_sealed BYTEA,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
