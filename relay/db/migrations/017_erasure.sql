-- Erasure (docs/api.md, "Erasure"): DELETE /api/interviews/{id}, DELETE /api/users/{id}
-- and `relay interviews delete`, `relay users delete`. A request marks the interview or
-- the user in one transaction (its live sessions are told to end, its candidate link or
-- user token stops opening anything), and from then on it is as good as gone for the API
-- (404). The rows go once nothing of them is left anywhere else: every session ended and
-- every recording's files removed (relay.erasure.service, run at once and then by every
-- member's housekeeping until done), so a storage outage or a member holding the files
-- never leaves files behind rows that say they are gone.
ALTER TABLE interviews ADD COLUMN erase_requested_at TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN erase_requested_at TIMESTAMPTZ;

-- What housekeeping looks at every few seconds: almost always nothing.
CREATE INDEX interviews_erasing ON interviews (erase_requested_at)
    WHERE erase_requested_at IS NOT NULL;
CREATE INDEX users_erasing ON users (erase_requested_at)
    WHERE erase_requested_at IS NOT NULL;
