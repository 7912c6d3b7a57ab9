//! The real `shield` binary as its own process (TLS only: no `[xdp]`), so
//! that its CPU time, memory and bytes read are the server's alone.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

pub struct ShieldProcess {
    child: Child,
    pub port: u16,
    /// The last lines of shield's log, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl ShieldProcess {
    /// Starts `shield run` of the binary at `shield` (a test's
    /// `env!("CARGO_BIN_EXE_shield")`) with `sites` (one or more `[[site]]`
    /// blocks on `127.0.0.1:0`) and returns once the first TLS listener is
    /// open.
    pub fn start(shield: &str, sites: &str) -> ShieldProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("shield.toml");
        std::fs::write(
            &config,
            format!(
                "[ranges]\nrefresh = \"off\"\ncache = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[http]\naction = \"off\"\n{sites}",
                dir.path().join("ranges.json").display().to_string()
            ),
        )
        .unwrap();
        let mut child = Command::new(shield)
            .args(["run", "--config"])
            .arg(&config)
            .env("SHIELD_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shield");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let lines = log.clone();
        // Drained for the process's life: a full pipe would stall its log.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if line.contains("TLS listener open") {
                    let port = line
                        .split("listen=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|addr| addr.rsplit(':').next())
                        .and_then(|port| port.parse::<u16>().ok());
                    if let Some(port) = port {
                        let _ = port_tx.send(port);
                    }
                }
                let mut lines = lines.lock().unwrap();
                if lines.len() > 200 {
                    lines.remove(0);
                }
                lines.push(line);
            }
        });
        let port = match port_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "shield did not open its TLS listener:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        ShieldProcess {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("shield exited ({status}):\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn sample(&self) -> Sample {
        Sample::of(self.pid())
    }
}

impl Drop for ShieldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the process has spent so far.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU seconds.
    pub cpu: f64,
    pub rss_kib: u64,
}

impl Sample {
    pub fn of(pid: u32) -> Sample {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After the command name, which may hold spaces: field 3 (state)
        // onwards; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        Sample {
            cpu: ticks as f64 / per_second,
            rss_kib,
        }
    }

    /// What was spent from `earlier` to this sample.
    pub fn since(&self, earlier: &Sample) -> Cost {
        Cost {
            cpu: self.cpu - earlier.cpu,
            rss_growth_kib: self.rss_kib as i64 - earlier.rss_kib as i64,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub cpu: f64,
    pub rss_growth_kib: i64,
}
