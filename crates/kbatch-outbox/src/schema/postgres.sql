-- kbatch outbox, PostgreSQL. {table} is a validated name starting with kbatch_outbox.
-- Times are milliseconds since the Unix epoch on the relay's clock (BIGINT): the same in all
-- three databases, and the relay compares them with the clock it computes backoff from.
-- state: 0 pending, 1 delivered, 2 dead.
CREATE TABLE IF NOT EXISTS {table} (
    id              UUID     PRIMARY KEY,
    msg_key         TEXT,
    dest_kind       SMALLINT NOT NULL,
    dest            TEXT     NOT NULL,
    payload         BYTEA    NOT NULL,
    headers         BYTEA    NOT NULL,
    created_at      BIGINT   NOT NULL,
    state           SMALLINT NOT NULL DEFAULT 0,
    attempts        INTEGER  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT   NOT NULL,
    last_error      TEXT,
    delivered_at    BIGINT
);
-- Only pending rows are ever claimed: a partial index stays small however many delivered
-- rows wait for the purge.
CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (id) WHERE state = 0;
-- Per-key order looks up the oldest pending entry of a key.
CREATE INDEX IF NOT EXISTS {table}_key ON {table} (msg_key, id) WHERE state = 0;
-- Wake-up: an insert notifies channel {table} once per statement, so an idle relay that
-- LISTENs starts at once instead of at its next poll. The payload is empty: it only wakes.
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS {table}_wake ON {table};
CREATE TRIGGER {table}_wake AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
