//! One throughput sample: the rate a load reached, and what the server and
//! the CPUs spent meanwhile, read from /proc just before and after.

use anyhow::bail;

use super::{
    procfs::{self, Cpus},
    servers::Server,
};
use crate::shell;

/// What each throughput sample measures besides the rate.
pub struct Meter {
    pub cpus: Cpus,
    /// Clock ticks per second, the unit of /proc's CPU times.
    ticks_per_second: f64,
    /// How long each load runs, for the messages.
    seconds: u32,
}

/// One throughput sample.
pub struct Sample {
    /// Completed requests (or handshakes) per second.
    pub rate: f64,
    /// The server's CPU time per completed request, µs.
    pub cpu_us: f64,
    /// Busy fraction, 0 to 1, of the server's CPU and of the load CPUs.
    pub server_busy: f64,
    pub load_busy: f64,
}

impl Meter {
    pub fn new(seconds: u32) -> anyhow::Result<Meter> {
        // USER_HZ is 100 on the usual Linux builds; getconf confirms it.
        let ticks_per_second = shell::output("getconf", &["CLK_TCK"])
            .ok()
            .and_then(|ticks| ticks.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0);
        Ok(Meter {
            cpus: Cpus::allowed()?,
            ticks_per_second,
            seconds,
        })
    }

    /// Runs `load`, which returns its rate and how many requests completed,
    /// and reads the server's CPU time and every CPU's busy time just
    /// before and after it.
    pub fn sample(
        &self,
        server: &Server,
        load: impl FnOnce() -> anyhow::Result<(f64, f64)>,
    ) -> anyhow::Result<Sample> {
        let (server_before, cpus_before) = (server.cpu_ticks()?, procfs::cpu_times()?);
        let (rate, count) = load()?;
        let (server_after, cpus_after) = (server.cpu_ticks()?, procfs::cpu_times()?);
        if count < 1.0 {
            bail!(
                "{}: no request completed in {} s; see its log in target/bench-tls",
                server.name,
                self.seconds
            );
        }
        let seconds = server_after.saturating_sub(server_before) as f64 / self.ticks_per_second;
        Ok(Sample {
            rate,
            cpu_us: seconds * 1e6 / count,
            server_busy: procfs::busy_fraction(&cpus_before, &cpus_after, &[self.cpus.server]),
            load_busy: procfs::busy_fraction(&cpus_before, &cpus_after, &self.cpus.load),
        })
    }
}

impl Sample {
    /// The rate, then the server's CPU per `unit` and both sides' busy share.
    pub fn line(&self, cpus: &Cpus, unit: &str) -> String {
        format!(
            "{:.0}; server CPU {:.1} µs/{unit}; busy: server CPU {} {:.0}%, load CPUs {} {:.0}%",
            self.rate,
            self.cpu_us,
            cpus.server,
            self.server_busy * 100.0,
            cpus.load_list(),
            self.load_busy * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_line() {
        let sample = Sample {
            rate: 18632.6,
            cpu_us: 52.84,
            server_busy: 0.996,
            load_busy: 0.874,
        };
        let cpus = Cpus {
            server: 0,
            load: vec![1, 2],
        };
        assert_eq!(
            sample.line(&cpus, "request"),
            "18633; server CPU 52.8 µs/request; busy: server CPU 0 100%, load CPUs 1,2 87%"
        );
    }
}
