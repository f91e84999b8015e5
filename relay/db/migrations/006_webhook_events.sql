-- The webhooks' outbox (relay/webhooks/outbox.py): one row per event, written in the same
-- transaction as the state change it reports, so an event exists if and only if its change
-- committed. Delivery to the registered endpoints reads from here.
CREATE TABLE webhook_events (
    id           TEXT PRIMARY KEY CHECK (id ~ '^evt_[0-9a-f]{32}$'),
    type         TEXT NOT NULL,
    interview_id TEXT,
    data         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- The order events of one interview are delivered in (a sequence, not the clock:
    -- two events of one transaction keep their order).
    seq          BIGSERIAL NOT NULL UNIQUE
);

CREATE INDEX webhook_events_interview ON webhook_events (interview_id, seq);
