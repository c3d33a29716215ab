//! The password file: one `user:hash` line per user, the hash an Argon2id PHC string
//! (salted, deliberately slow). `fieldbridge-broker passwd FILE USER` writes it.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read password file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write password file {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
    #[error("invalid user name {0:?}: it must be non-empty and contain no ':' or line break")]
    InvalidUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The users of a password file and their password hashes.
#[derive(Debug, Default, Clone)]
pub struct PasswordFile {
    users: HashMap<String, String>,
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            error: source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses password file text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |message: &str| AuthError::Syntax {
                path: origin.to_owned(),
                line: index + 1,
                message: message.to_owned(),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| syntax("expected user:hash"))?;
            if user.is_empty() {
                return Err(syntax("empty user name"));
            }
            PasswordHash::new(hash).map_err(|_| {
                syntax("the hash is not a PHC string (use fieldbridge-broker passwd)")
            })?;
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Self { users })
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is the password of `user`. Slow on purpose (tens of
    /// milliseconds): call it off the async threads.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        verify_password(hash, password)
    }

    fn render(&self) -> String {
        let mut users: Vec<_> = self.users.iter().collect();
        users.sort();
        users
            .into_iter()
            .map(|(user, hash)| format!("{user}:{hash}\n"))
            .collect()
    }
}

/// An Argon2id hash of `password` with a fresh random salt, as a PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|error| AuthError::Hash(error.to_string()))?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AuthError::Hash(error.to_string()))
}

/// Whether `password` matches `hash` (a PHC string from [`hash_password`]). Slow on
/// purpose: call it off the async threads.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Sets (adds or replaces) the password of `user` in the file at `path`, creating it if
/// missing. The file is replaced atomically and readable by its owner only.
pub fn set_password(path: &Path, user: &str, password: &[u8]) -> Result<(), AuthError> {
    if user.is_empty() || user.contains([':', '\n', '\r']) {
        return Err(AuthError::InvalidUser(user.to_owned()));
    }
    let mut file = load_or_empty(path)?;
    file.users.insert(user.to_owned(), hash_password(password)?);
    write_atomically(path, &file.render())
}

/// Removes `user` from the file; false if it was not there.
pub fn delete_user(path: &Path, user: &str) -> Result<bool, AuthError> {
    let mut file = load_or_empty(path)?;
    if file.users.remove(user).is_none() {
        return Ok(false);
    }
    write_atomically(path, &file.render())?;
    Ok(true)
}

fn load_or_empty(path: &Path) -> Result<PasswordFile, AuthError> {
    if path.exists() {
        PasswordFile::load(path)
    } else {
        Ok(PasswordFile::default())
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), AuthError> {
    let write_error = |source| AuthError::Write {
        path: path.display().to_string(),
        error: source,
    };
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile_in(dir).map_err(write_error)?;
    temp.1.write_all(text.as_bytes()).map_err(write_error)?;
    temp.1.sync_all().map_err(write_error)?;
    std::fs::rename(&temp.0, path).map_err(write_error)
}

/// A new file beside the target, readable and writable by its owner only.
fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = format!(
        ".passwd.{}.{}",
        std::process::id(),
        rand::thread_rng().next_u32()
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_verify_replace_delete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("passwd");
        set_password(&path, "alice", b"wonderland").expect("sets");
        set_password(&path, "bob", b"builder").expect("sets");
        let file = PasswordFile::load(&path).expect("loads");
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"wonderland"));
        assert!(!file.verify("alice", b"builder"));
        assert!(!file.verify("carol", b"wonderland"));
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(text.contains("alice:$argon2id$"), "{text}");
        assert!(!text.contains("wonderland"));

        set_password(&path, "alice", b"looking-glass").expect("replaces");
        let file = PasswordFile::load(&path).expect("loads");
        assert!(file.verify("alice", b"looking-glass"));
        assert!(!file.verify("alice", b"wonderland"));

        assert!(delete_user(&path, "bob").expect("deletes"));
        assert!(!delete_user(&path, "bob").expect("already gone"));
        assert!(!PasswordFile::load(&path).expect("loads").contains("bob"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn same_password_different_salt() {
        assert_ne!(
            hash_password(b"x").expect("hash"),
            hash_password(b"x").expect("hash")
        );
    }

    #[test]
    fn bad_files_and_users() {
        let error = PasswordFile::parse("# users\nalice\n", "pw").expect_err("no colon");
        assert!(error.to_string().starts_with("pw:2:"), "{error}");
        assert!(PasswordFile::parse("alice:plaintext\n", "pw").is_err());
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(set_password(&dir.path().join("p"), "a:b", b"x").is_err());
    }
}
