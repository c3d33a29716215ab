-- Payloads may be stored zstd-compressed (compressed = 1) when that makes them smaller;
-- `size` stays the payload's own length. Existing rows are stored as they are.
ALTER TABLE queue ADD COLUMN compressed INTEGER NOT NULL DEFAULT 0;
