//! The CPU budget of the budgeted keep-alive samples: a cgroup holding one
//! server's processes, with a CPU quota set and lifted around each sample.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::Context as _;

/// cgroup v2 (`cpu.max`) where the unified hierarchy has the cpu
/// controller, else v1's cpu hierarchy (`cpu.cfs_quota_us`).
pub struct CpuGroup {
    dir: PathBuf,
    v2: bool,
}

/// The quota's period; the quota is a share of it.
const PERIOD_US: u32 = 100_000;

impl CpuGroup {
    /// A new group for the server `server` holding `pids`.
    pub fn holding(server: &str, pids: &[u32]) -> anyhow::Result<CpuGroup> {
        let name = format!("shield-bench-{server}-{}", std::process::id());
        let unified = Path::new("/sys/fs/cgroup");
        let v2 = fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"));
        let dir = if v2 {
            // Children get the cpu controller only when the parent hands it on.
            let _ = fs::write(unified.join("cgroup.subtree_control"), "+cpu");
            unified.join(&name)
        } else {
            unified.join("cpu").join(&name)
        };
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create the cgroup {} for the budgeted keep-alive samples; the bench needs root \
                 and a cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us)",
                dir.display()
            )
        })?;
        let group = CpuGroup { dir, v2 };
        for pid in pids {
            group.write("cgroup.procs", &pid.to_string())?;
        }
        Ok(group)
    }

    /// `Some(percent)` of one CPU, or no limit.
    pub fn limit(&self, percent: Option<u32>) -> anyhow::Result<()> {
        for (file, value) in limit_writes(self.v2, percent) {
            self.write(file, &value)?;
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value)
            .with_context(|| format!("cannot write {value:?} to {}", path.display()))
    }
}

/// The files to write, in order, for a quota of `percent` of one CPU (or
/// none), in cgroup v2's or v1's terms.
fn limit_writes(v2: bool, percent: Option<u32>) -> Vec<(&'static str, String)> {
    let quota = percent.map(|p| p * PERIOD_US / 100);
    if v2 {
        let quota = quota.map_or("max".to_owned(), |q| q.to_string());
        vec![("cpu.max", format!("{quota} {PERIOD_US}"))]
    } else {
        vec![
            ("cpu.cfs_period_us", PERIOD_US.to_string()),
            (
                "cpu.cfs_quota_us",
                quota.map_or("-1".to_owned(), |q| q.to_string()),
            ),
        ]
    }
}

impl Drop for CpuGroup {
    /// The servers are stopped first; an emptied group can be removed.
    fn drop(&mut self) {
        let _ = self.limit(None);
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas() {
        let owned = |writes: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            writes.iter().map(|(f, v)| (*f, (*v).to_owned())).collect()
        };
        assert_eq!(
            limit_writes(true, Some(50)),
            owned(&[("cpu.max", "50000 100000")])
        );
        assert_eq!(
            limit_writes(true, None),
            owned(&[("cpu.max", "max 100000")])
        );
        assert_eq!(
            limit_writes(false, Some(50)),
            owned(&[
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000")
            ])
        );
        assert_eq!(
            limit_writes(false, None),
            owned(&[("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1")])
        );
    }
}
