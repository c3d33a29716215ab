-- Acknowledged rows are deleted in bulk: a device's session has every row of its
-- device up to `through` acknowledged, so those rows count as gone (no read returns
-- them, no bound counts them) until the writer deletes them together, which costs a
-- fraction of deleting each row as its acknowledgement arrives.
CREATE TABLE acknowledged (
    device  TEXT    PRIMARY KEY NOT NULL,
    through INTEGER NOT NULL
) WITHOUT ROWID;

-- The index carries each row's size, so that finding how far a device's acknowledged
-- rows reach, and what they weigh against queue.max_bytes, reads the index alone.
DROP INDEX queue_device_id;
CREATE INDEX queue_device_id_size ON queue (device, id, size);
