-- Events the broker refused for good (an MQTT 5 PUBACK reason that sending again cannot
-- change, or a packet larger than the broker accepts): moved here from the queue instead
-- of being deleted, with the reason, at most a bounded number (the oldest make room).
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY,  -- the event's id in the queue
    device      TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    kind        INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    refused_at  INTEGER NOT NULL,     -- Unix time in milliseconds
    reason      TEXT    NOT NULL
);

CREATE INDEX dead_letters_device ON dead_letters (device, id);

-- Events moved to the dead letters, per device, since the database was created.
ALTER TABLE drops ADD COLUMN dead_lettered INTEGER NOT NULL DEFAULT 0;
