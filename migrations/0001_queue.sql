-- Store-and-forward queue of the gateway: one row per QoS 1 event not yet acknowledged
-- by the broker. AUTOINCREMENT keeps ids strictly increasing even after the table has
-- been emptied, so a row id is also the event's position in its device's FIFO.
CREATE TABLE queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    size        INTEGER NOT NULL,   -- payload bytes, counted against queue.max_bytes
    enqueued_at INTEGER NOT NULL    -- Unix time in milliseconds
);

CREATE INDEX queue_device_id ON queue (device, id);

-- Events dropped per device, kept across restarts so `fieldbridge queue` can show them.
CREATE TABLE drops (
    device       TEXT    PRIMARY KEY NOT NULL,
    queue_full   INTEGER NOT NULL DEFAULT 0,  -- QoS 1 events discarded by the on_full policy
    offline_qos0 INTEGER NOT NULL DEFAULT 0   -- QoS 0 events discarded while not connected
) WITHOUT ROWID;
