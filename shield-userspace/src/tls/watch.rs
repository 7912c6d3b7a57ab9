//! Noticing that a site's certificate, key, CA or CRL file changed.
//!
//! Polling metadata every few seconds is enough: certificates change a few
//! times a year, and polling also sees a file replaced by rename (how ACME
//! clients and config management write) without inotify's re-arming.

use std::{os::unix::fs::MetadataExt, path::PathBuf, time::SystemTime};

use crate::config::Config;

/// What identifies a file's version: change time, modification time, size,
/// inode. `None` when it cannot be read (that is a change too).
type Stamp = Option<(SystemTime, i64, u64, u64)>;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stamps(Vec<(PathBuf, Stamp)>);

impl Stamps {
    pub fn of(config: &Config) -> Stamps {
        Stamps(
            files(config)
                .into_iter()
                .map(|path| {
                    let stamp = std::fs::metadata(&path).ok().map(|m| {
                        (
                            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            m.ctime(),
                            m.len(),
                            m.ino(),
                        )
                    });
                    (path, stamp)
                })
                .collect(),
        )
    }

    /// The first file whose stamp differs from `earlier`'s.
    pub fn changed_since(&self, earlier: &Stamps) -> Option<&PathBuf> {
        if self.0.len() != earlier.0.len() {
            return self.0.first().map(|(path, _)| path);
        }
        self.0
            .iter()
            .zip(&earlier.0)
            .find(|(now, then)| now != then)
            .map(|((path, _), _)| path)
    }
}

/// Every file the TLS state is built from.
fn files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for site in &config.sites {
        files.push(site.cert.clone());
        files.push(site.key.clone());
        files.extend(
            site.client_ca
                .iter()
                .filter_map(|ca| ca.file())
                .map(PathBuf::from),
        );
        files.extend(site.client_crl.iter().cloned());
    }
    files
}
