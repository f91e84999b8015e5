-- session_transcript holds the conversation's text for continuity only: what a resumed
-- page is given back and what a member taking a session over seeds its upstream with. Both
-- happen while the session is live, so the text is kept that long and no longer, whatever
-- ends the session (a finish, housekeeping, a dead member's recovery) and whether or not the
-- interview is recorded. The lasting transcript is the recording's, under the recordings'
-- own deletion and retention (docs/recording.md).
CREATE FUNCTION relay_forget_session_transcript() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM session_transcript WHERE session_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER interview_sessions_forget_transcript
    AFTER UPDATE OF state ON interview_sessions
    FOR EACH ROW
    WHEN (NEW.state IN ('ended', 'failed'))
    EXECUTE FUNCTION relay_forget_session_transcript();

-- What sessions that ended before this migration left behind is deleted by housekeeping in
-- batches (relay.sessions.continuity.ContinuityRows.purge_ended), not here: on a large
-- database one statement could outlast database.migration_timeout_s, and the start with it.
