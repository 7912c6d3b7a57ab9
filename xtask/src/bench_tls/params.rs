//! The bench's fixed parameters, and the ones `SHIELD_BENCH_QUICK=1`
//! shortens for a smoke run.

use std::time::Duration;

use super::load::Keepalive;

/// Connections in flight: enough to keep the server's CPU busy.
pub const CONCURRENCY: usize = 64;
/// The budgeted keep-alive samples' CPU quota for the server under test,
/// in percent of one CPU.
pub const BUDGET_PERCENT: u32 = 50;
/// SNI, Host and certificate name; resolves to loopback without any setup.
pub const NAME: &str = "localhost";
/// How long a server may take to listen, natively and under valgrind,
/// which translates each code path before it first runs it: shield
/// listens after about 1 s under callgrind here, so 60 s leaves room for a
/// busy host.
pub const START_WAIT: Duration = Duration::from_secs(20);
pub const CALLGRIND_START_WAIT: Duration = Duration::from_secs(60);
/// Requests in flight under callgrind: a few, since valgrind runs the
/// server at a small fraction of its speed and 64 would only queue.
pub const CALLGRIND_CONCURRENCY: usize = 4;
/// The loads counted under callgrind: HTTP/1.1 on 4 connections, h2 with
/// 4 streams on one.
pub const CALLGRIND_LOADS: [Keepalive; 2] = [
    Keepalive::H1 {
        connections: CALLGRIND_CONCURRENCY,
    },
    Keepalive::H2 {
        connections: 1,
        streams: CALLGRIND_CONCURRENCY,
    },
];
/// The h2 loads measured: what Cloudflare's edge sends (up to 200 streams
/// on a connection), spread over a few connections and packed into two.
pub const H2_LOADS: [Keepalive; 2] = [
    Keepalive::H2 {
        connections: 8,
        streams: 25,
    },
    Keepalive::H2 {
        connections: 2,
        streams: 200,
    },
];

/// How much of each figure a run measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Interleaved rounds per throughput figure; the median is reported.
    pub rounds: usize,
    /// Seconds per throughput sample.
    pub seconds: u32,
    /// Connections held open for the memory figures.
    pub idle_connections: usize,
    /// Keep-alive requests before the counters are zeroed (connections
    /// made, upstream pool filled, lazily built state in place) and
    /// counted after.
    pub callgrind_warmup: usize,
    pub callgrind_requests: usize,
    /// A smoke run: its figures prove the bench runs, nothing more.
    pub quick: bool,
}

impl Plan {
    /// The run docs/BENCHMARKS.md reports.
    pub const FULL: Plan = Plan {
        rounds: 5,
        seconds: 8,
        idle_connections: 10_000,
        callgrind_warmup: 400,
        callgrind_requests: 4_000,
        quick: false,
    };

    /// `SHIELD_BENCH_QUICK=1`: every step once and short, about a minute
    /// once built, to check the bench still runs end to end.
    pub const QUICK: Plan = Plan {
        rounds: 1,
        seconds: 2,
        idle_connections: 1_000,
        callgrind_warmup: 40,
        callgrind_requests: 400,
        quick: true,
    };

    pub fn from_env() -> Plan {
        Plan::from_quick(std::env::var_os("SHIELD_BENCH_QUICK").as_deref())
    }

    fn from_quick(value: Option<&std::ffi::OsStr>) -> Plan {
        match value {
            Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => Plan::QUICK,
            _ => Plan::FULL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_only_when_asked() {
        assert_eq!(Plan::from_quick(None), Plan::FULL);
        assert_eq!(Plan::from_quick(Some("1".as_ref())), Plan::QUICK);
        assert_eq!(Plan::from_quick(Some("TRUE".as_ref())), Plan::QUICK);
        assert_eq!(Plan::from_quick(Some("0".as_ref())), Plan::FULL);
        assert_eq!(Plan::from_quick(Some("".as_ref())), Plan::FULL);
    }
}
