//! The last known good range set on disk (`[ranges].cache`), so a restart
//! enforces at once, before (and without) any network request.
//!
//! Written atomically: a temp file in the same directory, fsync, rename over
//! the old file, fsync of the directory. A crash leaves the old file or the
//! new one, never a torn one.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    validate::{self, Limits},
    Provenance, RangeSet,
};

const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    format: u32,
    source: String,
    /// Unix seconds of the fetch that produced (or last confirmed) the set.
    fetched_at: u64,
    etag: Option<String>,
    ipv4_cidrs: Vec<String>,
    ipv6_cidrs: Vec<String>,
    /// The China Network's prefixes, when the set was fetched with them.
    /// Absent in caches written before `china_network` existed, which read
    /// as "fetched without the China Network"; left out when `None` so a
    /// cache without it stays readable by those older versions too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jdcloud_cidrs: Option<Vec<String>>,
}

/// A range set with the time it was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub ranges: RangeSet,
    pub fetched_at: SystemTime,
}

/// The range cache could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Writing (temp file, fsync, rename) failed.
    #[error("cannot write the range cache {path}; check that its directory exists and is writable by shield")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but cannot be read.
    #[error("cannot read the range cache {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid cache.
    #[error("the range cache {path} is corrupt; delete it or run `shield ranges --refresh`")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: Corruption,
    },
}

/// What is wrong with a corrupt cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// Not the cache's JSON shape.
    #[error(transparent)]
    Json(serde_json::Error),
    /// Written by a shield with another cache format.
    #[error("unknown format {0}")]
    Format(u32),
    /// A list entry that is not a CIDR of its family.
    #[error(transparent)]
    Ranges(super::RangesError),
    /// A set that validation refuses: edited or damaged.
    #[error(transparent)]
    Refused(validate::Refusal),
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `cached` to `path` atomically.
pub fn write(path: &Path, cached: &Cached) -> Result<(), CacheError> {
    let write_error = |source| CacheError::Write {
        path: path.to_owned(),
        source,
    };
    let file = CacheFile {
        format: FORMAT,
        source: cached.ranges.source.to_string(),
        fetched_at: unix_seconds(cached.fetched_at),
        etag: cached.ranges.etag.clone(),
        ipv4_cidrs: cached.ranges.ipv4.iter().map(ToString::to_string).collect(),
        ipv6_cidrs: cached.ranges.ipv6.iter().map(ToString::to_string).collect(),
        jdcloud_cidrs: cached
            .ranges
            .jdcloud
            .as_ref()
            .map(|list| list.iter().map(ToString::to_string).collect()),
    };
    let mut text =
        serde_json::to_string_pretty(&file).map_err(|e| write_error(std::io::Error::other(e)))?;
    text.push('\n');
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(write_error)?;
    // In the same directory, so the rename cannot cross filesystems.
    let mut temp = tempfile::Builder::new()
        .prefix(".ranges-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_error)?;
    temp.write_all(text.as_bytes()).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(path).map_err(|e| write_error(e.error))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error)?;
    Ok(())
}

/// Reads and validates the cache. `Ok(None)` when there is none yet.
pub fn read(path: &Path, limits: &Limits) -> Result<Option<Cached>, CacheError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let corrupt = |source: Corruption| CacheError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let file: CacheFile = serde_json::from_str(&text).map_err(|e| corrupt(Corruption::Json(e)))?;
    if file.format != FORMAT {
        return Err(corrupt(Corruption::Format(file.format)));
    }
    // Reuse the API parser: the cache holds the same lists.
    let api = serde_json::json!({
        "success": true,
        "result": {
            "ipv4_cidrs": file.ipv4_cidrs,
            "ipv6_cidrs": file.ipv6_cidrs,
            "jdcloud_cidrs": file.jdcloud_cidrs,
            "etag": file.etag,
        }
    });
    let ranges = RangeSet::from_api_json(&api.to_string(), Provenance::Named(file.source))
        .map_err(|e| corrupt(Corruption::Ranges(e)))?;
    // A cache is only ever written from a validated set; one that fails now
    // was edited or damaged, and must not be enforced.
    validate::validate(&ranges, limits).map_err(|e| corrupt(Corruption::Refused(e)))?;
    Ok(Some(Cached {
        ranges,
        fetched_at: UNIX_EPOCH + Duration::from_secs(file.fetched_at),
    }))
}

/// Where enforcement starts: the cache if valid, else the embedded snapshot
/// (with a warning when the cache exists but cannot be used).
pub fn load_or_snapshot(path: &Path, limits: &Limits) -> (RangeSet, Option<SystemTime>) {
    match read(path, limits) {
        Ok(Some(cached)) => (cached.ranges, Some(cached.fetched_at)),
        Ok(None) => {
            tracing::info!(cache = %path.display(), "no range cache yet; starting from the embedded snapshot");
            (RangeSet::snapshot(), None)
        }
        Err(error) => {
            tracing::warn!(error = %crate::error::Chain(&error), "falling back to the embedded snapshot");
            (RangeSet::snapshot(), None)
        }
    }
}

/// When the cache file last changed (to notice `shield ranges --refresh`).
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_printed_once() {
        use crate::error::tests::count_in_chain;
        let source = std::io::Error::from_raw_os_error(libc::EACCES);
        let cause = source.to_string();
        let error = CacheError::Write {
            path: "/var/lib/shield/ranges.json".into(),
            source,
        };
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");

        let json = serde_json::from_str::<serde_json::Value>("[").unwrap_err();
        let cause = json.to_string();
        let error = CacheError::Corrupt {
            path: "/var/lib/shield/ranges.json".into(),
            source: Corruption::Json(json),
        };
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");
    }

    use super::*;

    #[test]
    fn round_trip_and_corruption_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ranges.json");
        let limits = Limits::default();
        assert_eq!(read(&path, &limits).unwrap(), None);

        let mut ranges = RangeSet::snapshot();
        ranges.source = Provenance::Named("https://api.example/ips".into());
        let cached = Cached {
            ranges,
            fetched_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        write(&path, &cached).unwrap();
        assert_eq!(read(&path, &limits).unwrap(), Some(cached.clone()));
        let (loaded, at) = load_or_snapshot(&path, &limits);
        assert_eq!(loaded, cached.ranges);
        assert_eq!(at, Some(cached.fetched_at));
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ranges.json")]);

        for bad in [
            "{".to_owned(),
            String::new(),
            std::fs::read_to_string(&path)
                .unwrap()
                .replace("173.245.48.0/20", "10.0.0.0/8"),
            std::fs::read_to_string(&path)
                .unwrap()
                .replace("\"format\": 1", "\"format\": 9"),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(read(&path, &limits), Err(CacheError::Corrupt { .. })),
                "{bad}"
            );
            let (loaded, at) = load_or_snapshot(&path, &limits);
            assert_eq!(loaded, RangeSet::snapshot());
            assert_eq!(at, None);
        }
    }

    #[test]
    fn the_china_network_round_trips_and_old_caches_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ranges.json");
        let limits = Limits::default();
        let mut ranges = RangeSet::snapshot();
        ranges.source = Provenance::Named("https://api.example/ips".into());
        ranges.jdcloud = Some(vec![
            "116.196.0.0/17".parse().unwrap(),
            "2402:db40:5100::/40".parse().unwrap(),
        ]);
        let cached = Cached {
            ranges,
            fetched_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        write(&path, &cached).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"jdcloud_cidrs\""), "{text}");
        assert_eq!(read(&path, &limits).unwrap(), Some(cached.clone()));

        // Validated like the rest: an edited JD Cloud entry is corruption.
        std::fs::write(&path, text.replace("116.196.0.0/17", "10.0.0.0/8")).unwrap();
        assert!(matches!(
            read(&path, &limits),
            Err(CacheError::Corrupt {
                source: Corruption::Refused(validate::Refusal::ReservedRange { .. }),
                ..
            })
        ));

        // A set without the China Network writes no field, so the file is
        // what older versions wrote and read (deny_unknown_fields).
        let without = Cached {
            ranges: RangeSet::snapshot(),
            ..cached.clone()
        };
        write(&path, &without).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("jdcloud"));
        // A cache file from before china_network: read, with no list.
        let old = r#"{
  "format": 1,
  "source": "https://api.cloudflare.com/client/v4/ips",
  "fetched_at": 1700000000,
  "etag": "38f79d050aa027e3be3865e495dcc9bc",
  "ipv4_cidrs": ["173.245.48.0/20"],
  "ipv6_cidrs": ["2400:cb00::/32"]
}
"#;
        std::fs::write(&path, old).unwrap();
        let read_old = read(&path, &limits).unwrap().unwrap();
        assert_eq!(read_old.ranges.jdcloud, None);
        assert_eq!(read_old.ranges.ipv4.len(), 1);
    }
}
