-- A candidate is one user whatever the case their e-mail is written in (Ana@Example.com
-- and ana@example.com are one person to every mail system a hiring team uses): users are
-- found by lower(email), and this index keeps two spellings of one address from becoming
-- two users. The address is stored as first written.
--
-- A database that already holds such a pair (made before this migration) cannot take the
-- unique index: it gets a plain one, so lookups stay fast, and a warning naming how many;
-- every lookup then takes the oldest of the pair (docs/api.md). Merging them is the
-- operator's decision, not a migration's.
DO $$
DECLARE
    pairs integer;
BEGIN
    -- Held to the end of the migration's transaction: a member still running the older
    -- code cannot add a second spelling between the count and the index.
    LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;
    SELECT count(*) INTO pairs FROM (
        SELECT lower(email) FROM users GROUP BY lower(email) HAVING count(*) > 1
    ) AS duplicated;
    IF pairs = 0 THEN
        CREATE UNIQUE INDEX users_email_any_case ON users (lower(email));
    ELSE
        CREATE INDEX users_email_any_case ON users (lower(email));
        RAISE WARNING '% e-mail addresses have users in more than one case; lookups take the oldest', pairs;
    END IF;
END
$$;
