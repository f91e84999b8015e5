-- The webhooks' dispatchers are woken by the outbox rather than by polling it
-- (relay.webhooks.dispatcher): relay_webhooks_due() NOTIFies the cluster's command channel
-- (relay.cluster.bus) with the op "webhooks_due", and every delivering process looks for
-- work at once. Any INSERT into webhook_events calls it (by the relay, a `relay ...`
-- command or by hand with psql), and so do the relay's statements that make a delivery
-- due at once (a redelivery, an endpoint enabled again).
--
-- A constant payload and a statement-level trigger: PostgreSQL sends duplicates within
-- one transaction once, queued until COMMIT (nothing is sent for a rolled-back change, and
-- what a dispatcher is woken for is visible to it).
CREATE FUNCTION relay_webhooks_due() RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('relay_commands', '{"op": "webhooks_due"}')
$$;

CREATE FUNCTION relay_webhook_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM relay_webhooks_due();
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_events_notify
    AFTER INSERT ON webhook_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION relay_webhook_events_notify();
