//! The password file: one `user:hash` line per user, the hash an Argon2id PHC string
//! (salted, deliberately slow). `fieldbridge-broker passwd FILE USER` writes it.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
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
    /// Verified instead of a hash when the user is unknown, so that an unknown user costs
    /// as much as a wrong password; made on first use with the file's hash parameters.
    dummy: OnceLock<String>,
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
        Ok(Self {
            users,
            dummy: OnceLock::new(),
        })
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
    /// An unknown user takes as long as a known one, so that timing does not tell which
    /// user names exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => verify_password(hash, password),
            None => {
                let dummy = self
                    .dummy
                    .get_or_init(|| dummy_hash_like(self.users.values().min().map(String::as_str)));
                verify_password(dummy, password);
                false
            }
        }
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

/// A hash of a random password with the Argon2 variant and parameters of `reference` (a
/// PHC string; the defaults of [`hash_password`] when it is `None` or not Argon2):
/// verifying anything against it costs what verifying against `reference` costs, and
/// always fails.
pub fn dummy_hash_like(reference: Option<&str>) -> String {
    let mut password = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut password);
    let argon2 = reference
        .and_then(|hash| PasswordHash::new(hash).ok())
        .and_then(|parsed| {
            let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
            let version = parsed
                .version
                .map_or(Ok(Version::default()), Version::try_from)
                .ok()?;
            let params = Params::try_from(&parsed).ok()?;
            Some(Argon2::new(algorithm, version, params))
        })
        .unwrap_or_default();
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    SaltString::encode_b64(&salt)
        .ok()
        .and_then(|salt| {
            argon2
                .hash_password(&password, &salt)
                .ok()
                .map(|hash| hash.to_string())
        })
        .or_else(|| hash_password(&password).ok())
        .unwrap_or_default()
}

/// A dummy hash (see [`dummy_hash_like`]) with the parameters of [`hash_password`], made
/// once per process.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| dummy_hash_like(None))
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
    fn unknown_users_are_checked_against_a_dummy_with_the_same_parameters() {
        let params = "$argon2id$v=19$m=8192,t=3,p=1$";
        let reference = {
            let salt = SaltString::encode_b64(&[7u8; 16]).expect("salt");
            Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(8192, 3, 1, None).expect("params"),
            )
            .hash_password(b"secret", &salt)
            .expect("hash")
            .to_string()
        };
        let file = PasswordFile::parse(&format!("alice:{reference}\n"), "pw").expect("parses");
        assert!(!file.verify("mallory", b"secret"));
        let dummy = file.dummy.get().expect("made on first use");
        assert!(dummy.starts_with(params), "{dummy}");
        assert!(file.verify("alice", b"secret"));

        let default = dummy_hash();
        assert_eq!(
            PasswordHash::new(default).expect("PHC").params,
            PasswordHash::new(&hash_password(b"x").expect("hash"))
                .expect("PHC")
                .params
        );
        assert!(!verify_password(default, b""));
        assert_eq!(
            PasswordHash::new(&dummy_hash_like(Some("not a hash")))
                .expect("PHC")
                .params,
            PasswordHash::new(default).expect("PHC").params,
            "the defaults when the reference is unusable"
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
