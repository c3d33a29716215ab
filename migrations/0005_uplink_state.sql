-- What an uplink profile must remember across restarts: Sparkplug's bdSeq, the devices
-- announced to Home Assistant. One JSON value per key.
CREATE TABLE uplink_state (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
