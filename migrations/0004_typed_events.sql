-- Typed events: a row says what it holds (`kind`: 0 platform JSON, as every row queued
-- before this migration; 1 data, 2 health, 3 command result, 4 management) and when it
-- happened (`at`, Unix time in milliseconds), so each uplink profile encodes it when it
-- is sent. Existing rows stay as they are, readable by every profile.
ALTER TABLE queue ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
UPDATE queue SET at = enqueued_at;
