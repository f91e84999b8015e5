-- The claim that moved a session to 'connecting' (relay.sessions.shared_state): a claim
-- whose commit landed but whose reply was lost recognises its own row when retried,
-- and a member closes a claimed row only while it still holds that very claim.
ALTER TABLE interview_sessions ADD COLUMN claim_token TEXT;
