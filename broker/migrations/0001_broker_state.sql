-- Retained messages, one per topic.
CREATE TABLE retained (
    topic   TEXT PRIMARY KEY NOT NULL,
    payload BLOB NOT NULL,
    qos     INTEGER NOT NULL
);

-- Persistent sessions (clean session 0).
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY NOT NULL
);

CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    filter    TEXT NOT NULL,
    qos       INTEGER NOT NULL,
    PRIMARY KEY (client_id, filter)
);

-- Message bodies, stored once however many sessions queue them.
CREATE TABLE messages (
    id      INTEGER PRIMARY KEY NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL
);

-- Messages queued for or in flight to a persistent session, in session order (seq).
-- pkid is set once the message was sent; released once its PUBREC came (PUBREL owed).
CREATE TABLE queue (
    client_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    pkid       INTEGER,
    released   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, seq)
);
CREATE INDEX queue_message ON queue (message_id);

-- QoS 2 messages received from a persistent session's client, awaiting its PUBREL.
CREATE TABLE incoming_qos2 (
    client_id TEXT NOT NULL,
    pkid      INTEGER NOT NULL,
    PRIMARY KEY (client_id, pkid)
);
