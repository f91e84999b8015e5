-- The user cache is invalidated by PostgreSQL itself: any change to what the relay caches
-- about a user (relay.admission.users.UserRecord: id, email, active, remaining_seconds,
-- keyed by token_hash), made by the relay or by hand with psql, NOTIFies the channel
-- relay_user_cache with the token hash; every relay drops that entry from Redis and from
-- its local caches (relay.admission.invalidation). An INSERT notifies too: the new token
-- may be cached as unknown. A token hash that changes notifies the old and the new one.
-- TRUNCATE notifies '*': every cached user goes.
--
-- Kept cheap, it runs on every credit debit: the WHEN clause skips updates that change
-- nothing cached (e.g. revoked_at alone) without calling the function, and the NOTIFY is
-- queued until COMMIT (nothing is sent for a rolled-back change; duplicates within one
-- transaction are sent once).
CREATE FUNCTION relay_user_cache_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('relay_user_cache', '*');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('relay_user_cache', OLD.token_hash);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.token_hash <> OLD.token_hash) THEN
        PERFORM pg_notify('relay_user_cache', NEW.token_hash);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_cache_notify_update
    AFTER UPDATE ON users
    FOR EACH ROW
    WHEN (OLD.token_hash IS DISTINCT FROM NEW.token_hash
          OR OLD.id IS DISTINCT FROM NEW.id
          OR OLD.email IS DISTINCT FROM NEW.email
          OR OLD.active IS DISTINCT FROM NEW.active
          OR OLD.remaining_seconds IS DISTINCT FROM NEW.remaining_seconds)
    EXECUTE FUNCTION relay_user_cache_notify();

CREATE TRIGGER users_cache_notify_insert_delete
    AFTER INSERT OR DELETE ON users
    FOR EACH ROW
    EXECUTE FUNCTION relay_user_cache_notify();

CREATE TRIGGER users_cache_notify_truncate
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT
    EXECUTE FUNCTION relay_user_cache_notify();
