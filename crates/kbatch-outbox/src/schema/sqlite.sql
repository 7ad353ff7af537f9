-- kbatch outbox, SQLite (one writer at a time: the relay claims under BEGIN IMMEDIATE).
-- {table} is a validated name starting with kbatch_outbox. Times are milliseconds since the
-- Unix epoch. state: 0 pending, 1 delivered, 2 dead. id: the UUID's 16 bytes.
CREATE TABLE IF NOT EXISTS {table} (
    id              BLOB    NOT NULL PRIMARY KEY,
    msg_key         TEXT,
    dest_kind       INTEGER NOT NULL,
    dest            TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    headers         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    state           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    delivered_at    INTEGER
);
CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS {table}_key ON {table} (msg_key, id) WHERE state = 0;
