-- kbatch outbox, MariaDB 10.6+ / MySQL 8 (FOR UPDATE SKIP LOCKED). {table} is a validated
-- name starting with kbatch_outbox. Times are milliseconds since the Unix epoch (BIGINT).
-- state: 0 pending, 1 delivered, 2 dead. id: the UUID's 16 bytes, so ids sort by time.
CREATE TABLE IF NOT EXISTS {table} (
    id              BINARY(16)    NOT NULL PRIMARY KEY,
    msg_key         VARCHAR(1024) NULL,
    dest_kind       SMALLINT      NOT NULL,
    dest            VARCHAR(2048) NOT NULL,
    payload         LONGBLOB      NOT NULL,
    headers         MEDIUMBLOB    NOT NULL,
    created_at      BIGINT        NOT NULL,
    state           SMALLINT      NOT NULL DEFAULT 0,
    attempts        INT           NOT NULL DEFAULT 0,
    next_attempt_at BIGINT        NOT NULL,
    last_error      TEXT          NULL,
    delivered_at    BIGINT        NULL,
    KEY {table}_pending (state, id),
    -- Per-key order looks up the oldest pending entry of a key (a prefix: utf8mb4 keys).
    KEY {table}_key (msg_key(191), state, id)
) ENGINE = InnoDB;
