-- QoS 1 events lost because the database could not store them (a full or failing disk).
-- Counted in memory while that lasts, and added here by the first write that succeeds.
ALTER TABLE drops ADD COLUMN write_failed INTEGER NOT NULL DEFAULT 0;
