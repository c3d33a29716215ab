-- The platform registry: device types, devices and applications of the organization.
-- Tokens are stored as Argon2id PHC strings only.
CREATE TABLE device_types (
    name    TEXT PRIMARY KEY NOT NULL,
    created TEXT NOT NULL
);

CREATE TABLE devices (
    device_type TEXT NOT NULL REFERENCES device_types (name),
    device_id   TEXT NOT NULL,
    token_hash  TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created     TEXT NOT NULL,
    PRIMARY KEY (device_type, device_id)
);

CREATE TABLE applications (
    app_id     TEXT PRIMARY KEY NOT NULL,
    api_key    TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL,
    created    TEXT NOT NULL
);
