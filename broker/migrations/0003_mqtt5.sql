-- MQTT 5 session state.
-- Session Expiry Interval in seconds (NULL: never expires), and when the session's client
-- left (Unix ms; NULL while connected, or stored before this column existed).
ALTER TABLE sessions ADD COLUMN expiry INTEGER;
ALTER TABLE sessions ADD COLUMN absent_since INTEGER;
-- Subscription options: bit 0 No Local, bit 1 Retain As Published; and its Subscription
-- Identifier (0: none).
ALTER TABLE subscriptions ADD COLUMN options INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN identifier INTEGER NOT NULL DEFAULT 0;
-- A message's forwarded properties (MQTT 5 encoding) and expiry (Unix ms).
ALTER TABLE messages ADD COLUMN properties BLOB;
ALTER TABLE messages ADD COLUMN expires_at INTEGER;
ALTER TABLE retained ADD COLUMN properties BLOB;
ALTER TABLE retained ADD COLUMN expires_at INTEGER;
-- The Subscription Identifiers a queued delivery carries, comma-separated.
ALTER TABLE queue ADD COLUMN identifiers TEXT;
-- A will waiting for its delay (MQTT 5 Will Delay Interval) when its client left: the
-- message, and when it is due (Unix ms). Cleared when the client comes back or the will
-- is published.
ALTER TABLE sessions ADD COLUMN will_topic TEXT;
ALTER TABLE sessions ADD COLUMN will_payload BLOB;
ALTER TABLE sessions ADD COLUMN will_qos INTEGER;
ALTER TABLE sessions ADD COLUMN will_retain INTEGER;
ALTER TABLE sessions ADD COLUMN will_properties BLOB;
ALTER TABLE sessions ADD COLUMN will_at INTEGER;
