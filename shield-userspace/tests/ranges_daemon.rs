//! `shield run` (no `[xdp]`, no `[[site]]`: only the ranges' lifecycle)
//! with `[ranges].china_network`, from a file source: the first start
//! without JD Cloud ranges warns naming the key and refreshes at once, and
//! turning the key off and on with SIGHUP refreshes at once too.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Well under the up to 30 s jitter of an ordinary first refresh.
const PROMPTLY: Duration = Duration::from_secs(10);

/// The daemon, killed when the test ends however it ends.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shield"))
            .args(["run", "--config"])
            .arg(config)
            .env("SHIELD_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shield");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        // Drained for the process's life: a full pipe would stall its log.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                lines.lock().unwrap().push(line);
            }
        });
        Daemon { child, log }
    }

    fn hangup(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `done` holds, or fails with the log.
    fn wait_for(&self, what: &str, mut done: impl FnMut(&Daemon) -> bool) -> Duration {
        let started = Instant::now();
        while started.elapsed() < PROMPTLY {
            if done(self) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what}: not within {PROMPTLY:?}; log:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Files {
    _dir: tempfile::TempDir,
    config: PathBuf,
    source: PathBuf,
    cache: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        Files {
            config: dir.path().join("shield.toml"),
            source: dir.path().join("ips.json"),
            cache: dir.path().join("ranges.json"),
            _dir: dir,
        }
    }

    fn write_config(&self, china_network: bool) {
        std::fs::write(
            &self.config,
            format!(
                "[ranges]\nsources = [{:?}]\ncache = {:?}\nrefresh = \"6h\"\nchina_network = {china_network}\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n[http]\naction = \"off\"\n",
                self.source.display().to_string(),
                self.cache.display().to_string()
            ),
        )
        .unwrap();
    }

    /// The API's answer, with `jdcloud_cidrs` when given.
    fn write_source(&self, jdcloud: Option<&[&str]>) {
        let mut api: serde_json::Value =
            serde_json::from_str(include_str!("../data/cloudflare-ips-api.json")).unwrap();
        if let Some(list) = jdcloud {
            api["result"]["jdcloud_cidrs"] = serde_json::json!(list);
        }
        std::fs::write(&self.source, api.to_string()).unwrap();
    }

    /// The cached China Network list: `None` without a cache or list.
    fn cached_jdcloud(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(&self.cache).ok()?;
        let cache: serde_json::Value = serde_json::from_str(&text).ok()?;
        let list = cache.get("jdcloud_cidrs")?.as_array()?;
        Some(
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        )
    }
}

#[test]
fn first_start_without_jdcloud_ranges_warns_and_refreshes_at_once() {
    let files = Files::new();
    files.write_config(true);
    // A feed that lacks the field: refused, so the warning and the prompt
    // refusal both show, and nothing is cached.
    files.write_source(None);
    let daemon = Daemon::start(&files.config);
    daemon.wait_for("the warning naming the key", |d| {
        d.log().contains(
            "[ranges].china_network = true, but the ranges in force have no China Network (JD Cloud) ranges",
        )
    });
    daemon.wait_for("the prompt first refresh, refused", |d| {
        d.log().contains("result=jdcloud_missing")
    });
    assert!(!files.cache.exists(), "a refused update is not cached");
}

#[test]
fn turning_china_network_off_and_on_with_sighup_refreshes_at_once() {
    let files = Files::new();
    files.write_config(true);
    files.write_source(Some(&["116.196.0.0/17", "2402:db40:5100::/40"]));
    let daemon = Daemon::start(&files.config);
    daemon.wait_for("JD Cloud's ranges fetched and cached", |_| {
        files.cached_jdcloud().is_some_and(|list| list.len() == 2)
    });

    // Off: JD Cloud's prefixes leave the set, and the refresh that is due
    // at once rewrites the cache without them.
    files.write_config(false);
    daemon.hangup();
    daemon.wait_for("the cache without JD Cloud's ranges", |_| {
        files.cache.exists() && files.cached_jdcloud().is_none()
    });
    assert!(
        daemon
            .log()
            .contains("[ranges].china_network changed; a range refresh is due now"),
        "{}",
        daemon.log()
    );

    // On again: fetched again at once, not at the next 6 h period.
    files.write_config(true);
    daemon.hangup();
    daemon.wait_for("JD Cloud's ranges fetched again", |_| {
        files.cached_jdcloud().is_some_and(|list| list.len() == 2)
    });
}
