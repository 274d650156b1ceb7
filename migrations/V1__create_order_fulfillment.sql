-- One row per order, written by the relay from `order-placed` events.
-- `status` belongs to the fulfilment process; the relay never updates it.
-- `source_position` is the event's revision in the subscribed stream: the
-- upsert only replaces a row with an event that came later there.
CREATE TABLE order_fulfillment (
    id               bigserial   PRIMARY KEY,
    order_id         text        NOT NULL,
    status           text        NOT NULL DEFAULT 'Started',
    customer_id      text        NOT NULL,
    checkout_of_cart text,
    currency         char(3)     NOT NULL,
    subtotal         numeric     NOT NULL,
    tax              numeric     NOT NULL,
    total            numeric     NOT NULL,
    line_items       jsonb       NOT NULL,
    line_item_count  integer     NOT NULL,
    shipping         jsonb       NOT NULL,
    billing          jsonb       NOT NULL,
    extra            jsonb       NOT NULL DEFAULT '{}',
    placed_at        timestamptz NOT NULL,
    source_event_id  uuid        NOT NULL,
    source_stream    text        NOT NULL,
    source_revision  bigint      NOT NULL,
    source_position  bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT order_fulfillment_order_id_key UNIQUE (order_id),
    CONSTRAINT order_fulfillment_currency_check
        CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT order_fulfillment_amounts_check
        CHECK (subtotal >= 0 AND tax >= 0 AND total = subtotal + tax),
    CONSTRAINT order_fulfillment_line_items_check
        CHECK (line_item_count > 0
               AND jsonb_array_length(line_items) = line_item_count)
);
