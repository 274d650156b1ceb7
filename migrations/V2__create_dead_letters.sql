-- Events the relay gave up on, kept byte for byte so they can be inspected
-- and replayed. A redelivery of the same event bumps `seen_count`.
CREATE TABLE dead_letters (
    id            bigserial   PRIMARY KEY,
    event_id      uuid        NOT NULL,
    stream        text        NOT NULL,
    position      bigint      NOT NULL,
    event_type    text        NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    content_type  text        NOT NULL,
    payload       bytea       NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    seen_count    integer     NOT NULL DEFAULT 1,
    CONSTRAINT dead_letters_event_id_key UNIQUE (event_id)
);

CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, last_seen_at);
