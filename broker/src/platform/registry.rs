//! The platform registry (SQLite): device types, devices with their token hashes and
//! metadata, applications with their API keys and token hashes. A token is generated
//! here, returned once, and only its salted Argon2id hash is stored.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rand::distributions::{Alphanumeric, DistString};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::auth;
use fieldbridge_mqtt::platform::valid_name;

/// Characters of a generated token (about 143 bits from 62 symbols).
const TOKEN_LEN: usize = 24;
/// Random characters after `a-<org>-` in an API key.
const API_KEY_SUFFIX_LEN: usize = 10;
/// Connections of the pool: look-ups at connect time are short.
const POOL_SIZE: u32 = 4;
/// Time a statement waits for a lock held by another process (the CLI beside the broker).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("platform registry {path}: {error}")]
    Database { path: String, error: sqlx::Error },
    #[error("platform registry {path}: migration failed: {error}")]
    Migrate {
        path: String,
        error: sqlx::migrate::MigrateError,
    },
    #[error("invalid {what} {value:?} (1 to 36 of A-Z a-z 0-9 . _ -)")]
    InvalidName { what: &'static str, value: String },
    #[error("device metadata must be a JSON object: {0}")]
    InvalidMetadata(String),
    #[error("{0} is already registered (remove it first to issue a new token)")]
    Exists(String),
    #[error(transparent)]
    Hash(#[from] auth::AuthError),
}

/// A registered device, without its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_type: String,
    pub device_id: String,
    pub metadata: String,
    pub created: String,
}

/// A registered application, without its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    pub app_id: String,
    pub api_key: String,
    pub created: String,
}

/// The credentials of a new application, shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCredentials {
    pub api_key: String,
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct PlatformRegistry {
    pool: SqlitePool,
    path: String,
}

fn check_name(what: &'static str, value: &str) -> Result<(), RegistryError> {
    if valid_name(value) {
        Ok(())
    } else {
        Err(RegistryError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A fresh random token.
pub fn generate_token() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), TOKEN_LEN)
}

/// The salted slow hash of a token, computed off the async threads.
async fn hash_token(token: String) -> Result<String, RegistryError> {
    tokio::task::spawn_blocking(move || auth::hash_password(token.as_bytes()))
        .await
        .map_err(|error| RegistryError::Hash(auth::AuthError::Hash(error.to_string())))?
        .map_err(RegistryError::from)
}

impl PlatformRegistry {
    /// Opens the registry file, creating it (and its tables) if needed.
    pub async fn open(path: &Path) -> Result<Self, RegistryError> {
        let name = path.display().to_string();
        let database = |source| RegistryError::Database {
            path: name.clone(),
            error: source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await
            .map_err(database)?;
        sqlx::migrate!("./platform-migrations")
            .run(&pool)
            .await
            .map_err(|source| RegistryError::Migrate {
                path: name.clone(),
                error: source,
            })?;
        Ok(Self { pool, path: name })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn database(&self, error: sqlx::Error) -> RegistryError {
        RegistryError::Database {
            path: self.path.clone(),
            error,
        }
    }

    /// Registers a device (and its type if new); returns its token, which is not stored.
    pub async fn add_device(
        &self,
        device_type: &str,
        device_id: &str,
        metadata: Option<&str>,
    ) -> Result<String, RegistryError> {
        check_name("device type", device_type)?;
        check_name("device id", device_id)?;
        let metadata = match metadata {
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value @ serde_json::Value::Object(_)) => value.to_string(),
                Ok(_) => return Err(RegistryError::InvalidMetadata("not an object".into())),
                Err(error) => return Err(RegistryError::InvalidMetadata(error.to_string())),
            },
            None => "{}".to_owned(),
        };
        let token = generate_token();
        let hash = hash_token(token.clone()).await?;
        let created = now();
        let mut tx = self.pool.begin().await.map_err(|e| self.database(e))?;
        sqlx::query("INSERT OR IGNORE INTO device_types (name, created) VALUES (?, ?)")
            .bind(device_type)
            .bind(&created)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.database(e))?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO devices (device_type, device_id, token_hash, metadata, created) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(device_type)
        .bind(device_id)
        .bind(&hash)
        .bind(&metadata)
        .bind(&created)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.database(e))?;
        if inserted.rows_affected() == 0 {
            return Err(RegistryError::Exists(format!(
                "device {device_type}/{device_id}"
            )));
        }
        tx.commit().await.map_err(|e| self.database(e))?;
        Ok(token)
    }

    /// Removes a device; false if it was not registered.
    pub async fn remove_device(
        &self,
        device_type: &str,
        device_id: &str,
    ) -> Result<bool, RegistryError> {
        let removed = sqlx::query("DELETE FROM devices WHERE device_type = ? AND device_id = ?")
            .bind(device_type)
            .bind(device_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.database(e))?;
        Ok(removed.rows_affected() > 0)
    }

    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        let rows = sqlx::query(
            "SELECT device_type, device_id, metadata, created FROM devices \
             ORDER BY device_type, device_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.database(e))?;
        Ok(rows
            .into_iter()
            .map(|row| DeviceRecord {
                device_type: row.get(0),
                device_id: row.get(1),
                metadata: row.get(2),
                created: row.get(3),
            })
            .collect())
    }

    /// The token hash of a registered device.
    pub async fn device_token_hash(
        &self,
        device_type: &str,
        device_id: &str,
    ) -> Result<Option<String>, RegistryError> {
        sqlx::query_scalar("SELECT token_hash FROM devices WHERE device_type = ? AND device_id = ?")
            .bind(device_type)
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.database(e))
    }

    /// Registers an application of `org`; returns its API key and token (not stored).
    pub async fn add_app(&self, org: &str, app_id: &str) -> Result<AppCredentials, RegistryError> {
        check_name("application id", app_id)?;
        let suffix = Alphanumeric
            .sample_string(&mut rand::thread_rng(), API_KEY_SUFFIX_LEN)
            .to_lowercase();
        let api_key = format!("a-{org}-{suffix}");
        let token = generate_token();
        let hash = hash_token(token.clone()).await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO applications (app_id, api_key, token_hash, created) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(app_id)
        .bind(&api_key)
        .bind(&hash)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(|e| self.database(e))?;
        if inserted.rows_affected() == 0 {
            return Err(RegistryError::Exists(format!("application {app_id}")));
        }
        Ok(AppCredentials { api_key, token })
    }

    pub async fn remove_app(&self, app_id: &str) -> Result<bool, RegistryError> {
        let removed = sqlx::query("DELETE FROM applications WHERE app_id = ?")
            .bind(app_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.database(e))?;
        Ok(removed.rows_affected() > 0)
    }

    pub async fn apps(&self) -> Result<Vec<AppRecord>, RegistryError> {
        let rows = sqlx::query("SELECT app_id, api_key, created FROM applications ORDER BY app_id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.database(e))?;
        Ok(rows
            .into_iter()
            .map(|row| AppRecord {
                app_id: row.get(0),
                api_key: row.get(1),
                created: row.get(2),
            })
            .collect())
    }

    /// The application an API key belongs to, and its token hash.
    pub async fn app_by_key(
        &self,
        api_key: &str,
    ) -> Result<Option<(String, String)>, RegistryError> {
        let row = sqlx::query("SELECT app_id, token_hash FROM applications WHERE api_key = ?")
            .bind(api_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.database(e))?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn devices_and_apps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("registry.db");
        let registry = PlatformRegistry::open(&path).await.expect("opens");
        let token = registry
            .add_device("boiler", "b1", Some(r#"{"room": "cellar"}"#))
            .await
            .expect("adds");
        assert_eq!(token.len(), TOKEN_LEN);
        let hash = registry
            .device_token_hash("boiler", "b1")
            .await
            .expect("reads")
            .expect("registered");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(&token));
        assert!(auth::verify_password(&hash, token.as_bytes()));
        assert!(matches!(
            registry.add_device("boiler", "b1", None).await,
            Err(RegistryError::Exists(_))
        ));
        assert!(matches!(
            registry.add_device("boiler", "b/2", None).await,
            Err(RegistryError::InvalidName { .. })
        ));
        assert!(matches!(
            registry.add_device("boiler", "b2", Some("[1]")).await,
            Err(RegistryError::InvalidMetadata(_))
        ));
        let second = registry
            .add_device("boiler", "b2", None)
            .await
            .expect("adds");
        assert_ne!(token, second);
        let devices = registry.devices().await.expect("lists");
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].metadata, r#"{"room":"cellar"}"#);
        assert!(registry
            .remove_device("boiler", "b1")
            .await
            .expect("removes"));
        assert!(!registry.remove_device("boiler", "b1").await.expect("gone"));
        assert_eq!(
            registry
                .device_token_hash("boiler", "b1")
                .await
                .expect("reads"),
            None
        );

        let app = registry.add_app("acme", "dash").await.expect("adds");
        assert!(app.api_key.starts_with("a-acme-"), "{}", app.api_key);
        let (app_id, hash) = registry
            .app_by_key(&app.api_key)
            .await
            .expect("reads")
            .expect("found");
        assert_eq!(app_id, "dash");
        assert!(auth::verify_password(&hash, app.token.as_bytes()));
        assert!(registry.add_app("acme", "dash").await.is_err());
        assert_eq!(registry.apps().await.expect("lists").len(), 1);
        assert!(registry.remove_app("dash").await.expect("removes"));
        assert_eq!(
            registry.app_by_key(&app.api_key).await.expect("reads"),
            None
        );
        registry.close().await;

        // Survives reopening.
        let registry = PlatformRegistry::open(&path).await.expect("reopens");
        assert_eq!(registry.devices().await.expect("lists").len(), 1);
    }
}
