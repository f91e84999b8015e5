-- A candidate who opens an interview's link again after a session failed or their
-- connection was lost for good (the interview stays in_progress for
-- interviews.rejoin_window_s) gets a new session whose new upstream session is seeded with
-- the conversation of the interview's earlier sessions, as a take-over seeds its own
-- (relay.sessions.continuity.ContinuityRows.earlier_conversation). So an interview's
-- session_transcript now outlives the session's end while the interview is in progress,
-- and goes when the interview closes (completed, failed, cancelled, expired); a session of
-- no interview (or of an interview no longer in progress) loses it at its end, as before.

CREATE OR REPLACE FUNCTION relay_forget_session_transcript() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Kept for a rejoin: the interview's own close (below) deletes it. No lock on the
    -- interview here (a session's end would then wait on, and could deadlock with, the
    -- interview's own transitions); an item left by a close racing this end is swept by
    -- housekeeping (ContinuityRows.purge_ended).
    IF NEW.interview_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM interviews i WHERE i.id = NEW.interview_id AND i.status = 'in_progress'
    ) THEN
        RETURN NULL;
    END IF;
    DELETE FROM session_transcript WHERE session_id = NEW.id;
    RETURN NULL;
END
$$;

-- An interview that closes takes the conversation of all its sessions with it (those that
-- ended, and any a live session still writes is deleted at that session's end, above).
CREATE FUNCTION relay_forget_interview_transcript() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM session_transcript
    WHERE session_id IN (SELECT id FROM interview_sessions WHERE interview_id = NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER interviews_forget_transcript
    AFTER UPDATE OF status ON interviews
    FOR EACH ROW
    WHEN (NEW.status NOT IN ('scheduled', 'in_progress'))
    EXECUTE FUNCTION relay_forget_interview_transcript();

-- What interviews closed before this migration kept is nothing: migration 013's trigger
-- deleted every session's text at its end until now.
