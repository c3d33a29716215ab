-- Who each persistent session belongs to: user:NAME, client:ID (platform) or anonymous.
-- Only its owner resumes it. NULL for sessions stored before this column existed: the
-- first client to resume one becomes its owner.
ALTER TABLE sessions ADD COLUMN owner TEXT;
