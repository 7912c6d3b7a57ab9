//! The Cloudflare API token: read from a file only the owner can read, and
//! never shown (not in `Debug`, logs, errors or dry-run output).

use std::{fmt, os::unix::fs::PermissionsExt as _, path::Path};

use super::AopError;

/// An API token. `Debug` prints a placeholder, so a stray `{:?}` of a
/// struct holding it cannot leak it.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Reads the token from `path`, refusing a file that the group or
    /// others may read or write: a token anyone else can read is already
    /// leaked, whatever shield does with it.
    pub fn from_file(path: &Path) -> Result<Token, AopError> {
        let metadata = std::fs::metadata(path).map_err(|source| AopError::TokenRead {
            path: path.to_owned(),
            source,
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AopError::TokenPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| AopError::TokenRead {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        // A header value cannot hold control characters; saying so here
        // names the file instead of failing later inside the HTTP client.
        if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(AopError::TokenInvalid {
                path: path.to_owned(),
            });
        }
        Ok(Token(token.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn file(mode: u32, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn owner_only_file_is_read_and_trimmed() {
        let (_dir, path) = file(0o600, "s3cr3t-token\n");
        assert_eq!(Token::from_file(&path).unwrap().expose(), "s3cr3t-token");
        let (_dir, path) = file(0o400, "t");
        assert_eq!(Token::from_file(&path).unwrap().expose(), "t");
    }

    #[test]
    fn group_or_other_access_is_refused_with_the_fix() {
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let (_dir, path) = file(mode, "s3cr3t-token");
            let error = Token::from_file(&path).unwrap_err();
            let text = format!("{:#}", anyhow::Error::from(error));
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let (_dir, path) = file(0o600, "s3cr3t-token");
        let token = Token::from_file(&path).unwrap();
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }

    #[test]
    fn empty_or_multi_word_file_is_refused() {
        for text in ["", "\n", "two words"] {
            let (_dir, path) = file(0o600, text);
            assert!(matches!(
                Token::from_file(&path),
                Err(AopError::TokenInvalid { .. })
            ));
        }
    }
}
