-- Continuity (docs/operations.md, "Continuity"): a session whose browser leg dropped is
-- resumed with its resume token, on any member; what a member taking over from a dead one
-- needs (the time charged so far, the conversation so far) is kept here as it happens.
ALTER TABLE interview_sessions
    -- SHA-256 (hex) of the current resume token, rotated at each resume. NULL: the session
    -- cannot be resumed (not exchanged yet, or session.reconnect_grace_s = 0).
    ADD COLUMN resume_token_hash TEXT,
    -- Seconds charged so far, written as the interview goes (at most a few seconds old).
    ADD COLUMN used_seconds      DOUBLE PRECISION,
    -- When the member holding the session was found dead (its last heartbeat): the
    -- session stays resumable on another member until this plus the reconnect grace.
    ADD COLUMN holder_lost_at    TIMESTAMPTZ,
    -- 1, then 2, 3, ...: each time a member took the session over from a dead one, with a
    -- new upstream session seeded with the conversation so far.
    ADD COLUMN parts             INTEGER NOT NULL DEFAULT 1;

-- The conversation so far, from the relay's own transcript (text only): what a member
-- taking a session over seeds its new upstream session with, and what a resumed page is
-- given back (relay.transcript).
CREATE TABLE session_transcript (
    session_id TEXT NOT NULL REFERENCES interview_sessions (id) ON DELETE CASCADE,
    -- The item's place in the conversation (first seen first), unique per session.
    position   INTEGER NOT NULL CHECK (position >= 0),
    role       TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text       TEXT NOT NULL,
    -- Seconds into the interview (charged time) when the item began.
    at_s       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (session_id, position)
);

-- A session taken over by another member is recorded in parts (1, 2, ...), each its own
-- recording row and files; the manifest of each names the session and its part.
ALTER TABLE recordings ADD COLUMN part INTEGER NOT NULL DEFAULT 1;

-- Live sessions of dead members waiting for a take-over: the heartbeat's recovery closes
-- them once the grace has passed (a scan of this index, not of every session ever held).
CREATE INDEX interview_sessions_holder_lost ON interview_sessions (holder_lost_at)
    WHERE holder_lost_at IS NOT NULL AND state IN ('connecting', 'active');
