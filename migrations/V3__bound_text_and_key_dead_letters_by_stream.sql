-- Text columns get the bounds the decoder enforces (UTF-8 bytes), so that a
-- writer other than the relay cannot store what the relay would refuse.
-- NOT VALID: rows written before this migration are not re-checked, so an
-- existing database never fails to migrate; new and updated rows are.
ALTER TABLE order_fulfillment
    ADD CONSTRAINT order_fulfillment_text_lengths_check
        CHECK (octet_length(order_id) <= 256
               AND octet_length(customer_id) <= 256
               AND octet_length(checkout_of_cart) <= 256) NOT VALID;

-- KurrentDB event ids are unique only within a stream, so two poison events
-- in different streams may share one. Keyed by the id alone, the second
-- would overwrite the first's reason and keep only the first's payload.
ALTER TABLE dead_letters
    DROP CONSTRAINT dead_letters_event_id_key,
    ADD CONSTRAINT dead_letters_event_stream_key UNIQUE (event_id, stream);
