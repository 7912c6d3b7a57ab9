//! What the bench reads from /proc: the CPUs it may use, every CPU's busy
//! time, and a server's processes, CPU time and memory.

use std::{collections::BTreeMap, fs};

use anyhow::{bail, Context as _};

/// Where each side runs: the server under test alone on one CPU, so that
/// its rate is not capped by a client competing for that CPU; the load
/// clients and the upstream on the rest.
#[derive(Debug, PartialEq)]
pub struct Cpus {
    pub server: u32,
    pub load: Vec<u32>,
}

impl Cpus {
    /// The CPUs this process may run on (a container's cpuset can allow
    /// fewer than the host has): the first for the server, the rest for
    /// the load.
    pub fn allowed() -> anyhow::Result<Cpus> {
        let status =
            fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
        Cpus::from_status(&status)
    }

    /// [`Cpus::allowed`] from the text of /proc/self/status.
    fn from_status(status: &str) -> anyhow::Result<Cpus> {
        let list = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .map(str::trim)
            .context("/proc/self/status has no Cpus_allowed_list; the bench needs Linux")?;
        let cpus = cpu_list(list).with_context(|| {
            format!("cannot parse Cpus_allowed_list {list:?} in /proc/self/status")
        })?;
        match cpus.split_first() {
            Some((&server, load)) if !load.is_empty() => Ok(Cpus {
                server,
                load: load.to_vec(),
            }),
            _ => bail!(
                "the TLS bench needs at least 2 CPUs (the server alone on one, the load clients on \
                 the rest) but this process may run only on CPU {list}; run it on a host or \
                 container with 2 or more"
            ),
        }
    }

    /// The load CPUs as a taskset list.
    pub fn load_list(&self) -> String {
        let cpus: Vec<String> = self.load.iter().map(u32::to_string).collect();
        cpus.join(",")
    }
}

/// The kernel's CPU list format: `0-3,6` is [0, 1, 2, 3, 6].
fn cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: u32 = first.trim().parse().ok()?;
                let last: u32 = last.trim().parse().ok()?;
                cpus.extend(first..=last);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// Clock ticks one CPU spent busy and idle since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    busy: u64,
    idle: u64,
}

/// Every CPU's times from /proc/stat, by CPU number.
pub fn cpu_times() -> anyhow::Result<BTreeMap<u32, CpuTime>> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let times = parse_cpu_times(&stat);
    if times.is_empty() {
        bail!("no per-CPU lines in /proc/stat");
    }
    Ok(times)
}

/// The per-CPU lines of /proc/stat's text.
fn parse_cpu_times(stat: &str) -> BTreeMap<u32, CpuTime> {
    let mut times = BTreeMap::new();
    for line in stat.lines() {
        // `cpu` alone is the sum of all; `cpuN` is CPU N.
        let Some((cpu, rest)) = line.strip_prefix("cpu").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<u32>() else {
            continue;
        };
        let ticks: Vec<u64> = rest
            .split_whitespace()
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq, then steal (time a
        // hypervisor took away, neither ours nor idle) and guest (already
        // in user), both left out.
        if let [user, nice, system, idle, iowait, irq, softirq, ..] = ticks[..] {
            let busy = user + nice + system + irq + softirq;
            times.insert(
                cpu,
                CpuTime {
                    busy,
                    idle: idle + iowait,
                },
            );
        }
    }
    times
}

/// The busy share of `cpus`' time between two readings, 0 to 1.
pub fn busy_fraction(
    before: &BTreeMap<u32, CpuTime>,
    after: &BTreeMap<u32, CpuTime>,
    cpus: &[u32],
) -> f64 {
    let (mut busy, mut idle) = (0, 0);
    for cpu in cpus {
        let was = before.get(cpu).copied().unwrap_or_default();
        let is = after.get(cpu).copied().unwrap_or_default();
        busy += is.busy.saturating_sub(was.busy);
        idle += is.idle.saturating_sub(was.idle);
    }
    busy as f64 / (busy + idle).max(1) as f64
}

/// `pid` and its children (nginx's workers).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    pids.extend(children(pid));
    pids
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat_ppid(&stat) == Some(parent))
        })
        .collect()
}

/// The parent of a /proc/PID/stat line: `pid (comm) state ppid ...`, where
/// comm may hold spaces and parentheses, so the split is after its last
/// closing parenthesis.
fn stat_ppid(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime plus stime (fields 14 and 15) of a /proc/PID/stat line.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // As in `stat_ppid`: split after comm; the rest starts at field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// RSS and PSS of `pids`, summed; `name` is whose they are, for errors.
pub fn memory(name: &str, pids: &[u32]) -> anyhow::Result<Memory> {
    let mut memory = Memory {
        rss_kib: 0,
        pss_kib: 0,
    };
    for pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("{name}: cannot read /proc/{pid}/status"))?;
        memory.rss_kib += kib_field(&status, "VmRSS:");
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("{name}: cannot read /proc/{pid}/smaps_rollup"))?;
        memory.pss_kib += kib_field(&rollup, "Pss:");
    }
    Ok(memory)
}

/// User plus system CPU time, in clock ticks, of `pids`, summed. Each
/// process's own stat line, which the kernel sums over all its threads,
/// including any that exited since the last reading (a sum over
/// /proc/PID/task/* would lose those).
pub fn cpu_ticks(name: &str, pids: &[u32]) -> anyhow::Result<u64> {
    let mut ticks = 0;
    for pid in pids {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| {
            format!(
                "{name}: cannot read /proc/{pid}/stat; did it exit? see its log in target/bench-tls"
            )
        })?;
        ticks += stat_cpu_ticks(&stat)
            .with_context(|| format!("{name}: unexpected /proc/{pid}/stat {stat:?}"))?;
    }
    Ok(ticks)
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list("0"), Some(vec![0]));
        assert_eq!(cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(cpu_list("1, 4-5"), Some(vec![1, 4, 5]));
        assert_eq!(cpu_list("0-x"), None);
        assert_eq!(cpu_list(""), None);
    }

    #[test]
    fn allowed_cpus_from_status() {
        let status =
            "Name:\tcargo\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed_list:\t0\n";
        let cpus = Cpus::from_status(status).unwrap();
        assert_eq!(
            cpus,
            Cpus {
                server: 0,
                load: vec![1]
            }
        );
        assert_eq!(cpus.load_list(), "1");
        let wide = Cpus::from_status("Cpus_allowed_list:\t2-4,7\n").unwrap();
        assert_eq!((wide.server, wide.load_list()), (2, "3,4,7".to_owned()));
        let one = Cpus::from_status("Cpus_allowed_list:\t3\n").unwrap_err();
        assert!(one.to_string().contains("at least 2 CPUs"), "{one}");
        assert!(Cpus::from_status("Name:\tx\n").is_err());
    }

    #[test]
    fn proc_stat_per_cpu_lines() {
        let stat = "cpu  100 0 50 1000 10 0 5 7 0 0\n\
                    cpu0 60 1 30 400 4 2 3 5 0 0\n\
                    cpu1 40 0 20 600 6 0 2\n\
                    cpu2 1 2 3\n\
                    intr 12345 1 2\n\
                    ctxt 999\n";
        let times = parse_cpu_times(stat);
        assert_eq!(times.len(), 2, "the sum line and short lines are skipped");
        // Steal (5) is neither busy nor idle.
        assert_eq!(
            times[&0],
            CpuTime {
                busy: 60 + 1 + 30 + 2 + 3,
                idle: 400 + 4
            }
        );
        assert_eq!(
            times[&1],
            CpuTime {
                busy: 62,
                idle: 606
            }
        );
    }

    #[test]
    fn busy_fractions() {
        let at = |busy, idle| {
            BTreeMap::from([
                (0, CpuTime { busy, idle }),
                (1, CpuTime { busy: 0, idle: 0 }),
            ])
        };
        let (before, after) = (at(100, 100), at(175, 125));
        assert_eq!(busy_fraction(&before, &after, &[0]), 0.75);
        // A CPU missing from a reading, or with no time passed, adds nothing.
        assert_eq!(busy_fraction(&before, &after, &[0, 1, 9]), 0.75);
        assert_eq!(busy_fraction(&before, &before, &[0]), 0.0);
    }

    #[test]
    fn stat_lines() {
        // comm with a space and a parenthesis, as a process may name itself.
        let stat = "4242 (nginx: (worker) 1) S 4200 4200 4200 0 -1 4194624 \
                    88 0 0 0 1234 567 0 0 20 0 1 0 100 1000 200";
        assert_eq!(stat_ppid(stat), Some(4200));
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_ppid("4242 (x"), None);
        assert_eq!(stat_cpu_ticks("4242 (x) S 1 2"), None);
    }

    #[test]
    fn kib_fields() {
        let status = "Name:\tshield\nVmPeak:\t  99 kB\nVmRSS:\t   10548 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), 10548);
        assert_eq!(kib_field(status, "Pss:"), 0);
        let rollup = "00400000-7fff [rollup]\nRss:  9000 kB\nPss:  8000 kB\nPss_Anon: 10 kB\n";
        assert_eq!(kib_field(rollup, "Pss:"), 8000);
    }
}
