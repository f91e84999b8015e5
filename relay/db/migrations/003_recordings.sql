-- Interview recordings (relay/recording): one row per recorded session, its lifecycle
-- (recording -> rendering -> ready | failed; deleted by retention or the API) and where
-- the files are. The session row says whether the candidate was shown the recording
-- notice and what became of the recording.
ALTER TABLE recordings
    ADD COLUMN status         TEXT NOT NULL DEFAULT 'recording'
                              CHECK (status IN ('recording', 'rendering', 'ready', 'failed', 'deleted')),
    ADD COLUMN status_reason  TEXT,
    ADD COLUMN format         TEXT NOT NULL DEFAULT 'ogg',
    ADD COLUMN storage        TEXT NOT NULL DEFAULT 'local',
    -- A local directory, or s3://bucket/prefix/ of the recording's objects.
    ADD COLUMN location       TEXT,
    ADD COLUMN relay_instance TEXT,
    ADD COLUMN manifest       JSONB,
    ADD COLUMN recovered      BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN finished_at    TIMESTAMPTZ;

CREATE INDEX recordings_created ON recordings (created_at DESC, id DESC);
CREATE INDEX recordings_session ON recordings (session_id);
CREATE INDEX recordings_status ON recordings (status);

ALTER TABLE interview_sessions
    ADD COLUMN recording_notice_shown BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN recording_status       TEXT;
