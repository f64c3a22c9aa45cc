-- Email sequences: unsubscribes and one delivery record per customer, sequence and step.

ALTER TABLE customers ADD COLUMN unsubscribed_at timestamptz;

CREATE TABLE email_deliveries (
    customer_id uuid NOT NULL REFERENCES customers (id),
    sequence    text NOT NULL,
    step        text NOT NULL,
    -- Tells apart repeatable sequences (the dunning email of each failed invoice).
    occurrence  text NOT NULL DEFAULT '',
    -- pending: claimed, not yet handed to SMTP; sending: in the SMTP conversation;
    -- sent: accepted by the server; failed: not accepted, will be retried;
    -- rejected: refused for good; skipped: a stop condition held;
    -- uncertain: the worker stopped during the SMTP conversation, so it is not resent.
    status      text NOT NULL
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'rejected', 'skipped', 'uncertain')),
    recipient   text NOT NULL,
    message_id  text,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    sent_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, sequence, step, occurrence)
);
