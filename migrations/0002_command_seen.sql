-- Commands already acted on, per device, so a redelivered command (same reqId) is not
-- written twice, even after a restart. Only the most recent rows per device are kept
-- (upstream.remembered_commands); the rowid orders them.
CREATE TABLE command_seen (
    device  TEXT    NOT NULL,
    req_id  TEXT    NOT NULL,
    seen_at INTEGER NOT NULL,   -- Unix time in milliseconds
    UNIQUE (device, req_id)
);
