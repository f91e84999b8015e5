-- Webhooks (relay/webhooks): the endpoints hiring teams register, and the delivery of each
-- outbox event (webhook_events, migration 006) to each endpoint subscribed to its type.

-- Set once the event's deliveries exist (one per endpoint subscribed when it was fanned
-- out); until then it waits in the outbox.
ALTER TABLE webhook_events ADD COLUMN dispatched_at TIMESTAMPTZ;
CREATE INDEX webhook_events_undispatched ON webhook_events (seq) WHERE dispatched_at IS NULL;

CREATE TABLE webhook_endpoints (
    id            TEXT PRIMARY KEY CHECK (id ~ '^wh_[0-9a-f]{32}$'),
    url           TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    -- The event types it receives (relay.webhooks.outbox.EVENT_TYPES).
    events        TEXT[] NOT NULL,
    -- The signing secret (whsec_…), sealed under the state key with the endpoint's id as
    -- associated data (relay.sealing): deliveries need it back, a dump must not give it.
    secret_sealed BYTEA NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT true,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One event to one endpoint: delivered at least once, in the order of the events' seq
-- among the deliveries of one interview to one endpoint.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY CHECK (id ~ '^whd_[0-9a-f]{32}$'),
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    -- The event's, copied: the claim orders and blocks on them without a join.
    seq              BIGINT NOT NULL,
    interview_id     TEXT,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- After this, a failed attempt is the last one (webhooks.retry_for_s after the event).
    give_up_at       TIMESTAMPTZ NOT NULL,
    -- The instance attempting it now, until when (a lease: an instance that dies lets go).
    claimed_by       TEXT,
    claimed_until    TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, interview_id, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

-- Every HTTP attempt of a delivery: the delivery log.
CREATE TABLE webhook_attempts (
    id           BIGSERIAL PRIMARY KEY,
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- delivered | rejected | timeout | network | refused | error (relay.webhooks.sender)
    outcome      TEXT NOT NULL,
    status_code  INTEGER,
    duration_ms  INTEGER NOT NULL,
    error        TEXT,
    instance     TEXT NOT NULL
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
