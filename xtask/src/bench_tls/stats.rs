//! The statistics and the results table: medians of the interleaved
//! samples, shield's ratios to each peer and whether each target is met.
//!
//! Every ratio is shield's figure over the peer's, whatever the row: above
//! 1x is better for a rate, below 1x for a cost (CPU, instructions,
//! memory). A target names the peer it is judged against: nginx for the
//! rows whose targets were set against nginx alone, the better of nginx
//! and haproxy for the rest.

use super::{
    params::{Plan, CALLGRIND_CONCURRENCY},
    procfs::{Cpus, Memory},
    sampling::Sample,
    servers::Kind,
};

/// The upper middle value for an even count; NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Per server, the median of one field of its samples; `None` for a
/// server with no samples.
fn medians(samples: &[Vec<Sample>], field: fn(&Sample) -> f64) -> Vec<Option<f64>> {
    samples
        .iter()
        .map(|s| (!s.is_empty()).then(|| median(&s.iter().map(field).collect::<Vec<_>>())))
        .collect()
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Which peer a target is judged against.
#[derive(Clone, Copy, Debug)]
pub enum Against {
    Nginx,
    /// The better of the peers: the one with the higher rate, or the lower
    /// cost.
    BetterPeer,
}

/// A target on shield's ratio to a peer.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtLeast(f64, Against),
    AtMost(f64, Against),
}

impl Target {
    fn text(self) -> String {
        let (sign, ratio, against) = match self {
            Target::AtLeast(r, a) => (">=", r, a),
            Target::AtMost(r, a) => ("<=", r, a),
        };
        let peer = match against {
            Against::Nginx => "nginx",
            Against::BetterPeer => "the better peer",
        };
        format!("{sign} {ratio}x {peer}")
    }

    /// Met, given shield's ratio to each peer (nginx's first).
    fn met(self, ratios: &[(Kind, f64)]) -> bool {
        let judged = |against| {
            ratios
                .iter()
                .filter(move |(kind, _)| match against {
                    Against::Nginx => *kind == Kind::Nginx,
                    Against::BetterPeer => true,
                })
                .map(|(_, r)| *r)
        };
        match self {
            // Against the better peer, every peer must be beaten by the
            // margin, so the least favourable ratio decides.
            Target::AtLeast(at_least, against) => {
                let worst = judged(against).fold(f64::INFINITY, f64::min);
                worst.is_finite() && worst >= at_least
            }
            Target::AtMost(at_most, against) => {
                let worst = judged(against).fold(f64::NEG_INFINITY, f64::max);
                worst.is_finite() && worst <= at_most
            }
        }
    }
}

/// One row: a value per server (`None` where it was not measured), shown
/// with `decimals`, and its target if it has one.
pub struct Row {
    pub label: String,
    pub values: Vec<Option<f64>>,
    pub decimals: usize,
    pub target: Option<Target>,
    /// What the target column says when there is none.
    pub note: &'static str,
}

/// The table's frame: the servers, in the order of every row's values.
pub struct Table<'a> {
    pub kinds: &'a [Kind],
}

impl Table<'_> {
    /// The first shield build: the one the ratios are for.
    fn shield(&self) -> Option<usize> {
        self.kinds.iter().position(|k| !k.is_peer())
    }

    fn peers(&self) -> impl Iterator<Item = (usize, Kind)> + '_ {
        self.kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_peer())
            .map(|(i, k)| (i, *k))
    }

    pub fn header(&self) -> String {
        let mut out = String::from("| figure |");
        for kind in self.kinds {
            out.push_str(&format!(" {} |", kind.heading()));
        }
        for (_, peer) in self.peers() {
            out.push_str(&format!(" shield/{} |", peer.name()));
        }
        out.push_str(" target |\n| --- |");
        let columns = self.kinds.len() + self.peers().count();
        out.push_str(&" ---: |".repeat(columns));
        out.push_str(" --- |\n");
        out
    }

    pub fn row(&self, row: &Row) -> String {
        let mut out = format!("| {} |", row.label);
        for value in &row.values {
            match value {
                Some(v) => out.push_str(&format!(" {v:.prec$} |", prec = row.decimals)),
                None => out.push_str(" - |"),
            }
        }
        let shield = self
            .shield()
            .and_then(|i| row.values.get(i).copied().flatten());
        let mut ratios = Vec::new();
        for (i, peer) in self.peers() {
            match (shield, row.values.get(i).copied().flatten()) {
                (Some(s), Some(p)) if p > 0.0 => {
                    let ratio = s / p;
                    ratios.push((peer, ratio));
                    out.push_str(&format!(" {ratio:.2}x |"));
                }
                _ => out.push_str(" - |"),
            }
        }
        match row.target {
            Some(target) => {
                let verdict = if target.met(&ratios) {
                    "met"
                } else {
                    "NOT met"
                };
                out.push_str(&format!(" {}: {verdict} |\n", target.text()));
            }
            None => out.push_str(&format!(" {} |\n", row.note)),
        }
        out
    }
}

/// One throughput figure: every server's samples, and its target.
pub struct Throughput {
    /// Such as "h2 requests/s, 8 connections x 25 streams".
    pub what: String,
    /// What the CPU row counts per: "request" or "handshake".
    pub unit: &'static str,
    pub samples: Vec<Vec<Sample>>,
    pub target: Option<Target>,
}

impl Throughput {
    pub fn new(
        what: String,
        unit: &'static str,
        kinds: &[Kind],
        target: Option<Target>,
    ) -> Throughput {
        Throughput {
            what,
            unit,
            samples: kinds.iter().map(|_| Vec::new()).collect(),
            target,
        }
    }

    /// The rate row and the server CPU row.
    fn rows(&self) -> [Row; 2] {
        [
            Row {
                label: self.what.clone(),
                values: medians(&self.samples, |s| s.rate),
                decimals: 0,
                target: self.target,
                note: "",
            },
            Row {
                label: format!("server CPU per {}, µs ({})", self.unit, self.what),
                values: medians(&self.samples, |s| s.cpu_us),
                decimals: 1,
                target: None,
                note: "lower is better",
            },
        ]
    }
}

/// Memory with idle connections held, per server (`None`: not measured).
pub struct Idle {
    /// "mTLS" (HTTP/1.1) or "h2".
    pub what: &'static str,
    pub connections: usize,
    /// At start and with the connections held.
    pub memory: Vec<Option<(Memory, Memory)>>,
    /// On the RSS row.
    pub target: Option<Target>,
    /// On the per-connection row.
    pub per_connection_target: Option<Target>,
}

impl Idle {
    fn rows(&self) -> Vec<Row> {
        let each = |f: &dyn Fn(&(Memory, Memory)) -> f64| -> Vec<Option<f64>> {
            self.memory.iter().map(|m| m.as_ref().map(f)).collect()
        };
        let (what, n) = (self.what, self.connections);
        vec![
            Row {
                label: format!("RSS at {n} idle {what} connections, MiB"),
                values: each(&|(_, held)| mib(held.rss_kib)),
                decimals: 1,
                target: self.target,
                note: "",
            },
            Row {
                label: format!("PSS at {n} idle {what} connections, MiB"),
                values: each(&|(_, held)| mib(held.pss_kib)),
                decimals: 1,
                target: None,
                note: "",
            },
            Row {
                label: format!("RSS per idle {what} connection, KiB"),
                values: each(&|(start, held)| {
                    held.rss_kib.saturating_sub(start.rss_kib) as f64 / n.max(1) as f64
                }),
                decimals: 1,
                target: self.per_connection_target,
                note: "",
            },
            Row {
                label: format!("RSS at start ({what} run), MiB"),
                values: each(&|(start, _)| mib(start.rss_kib)),
                decimals: 1,
                target: None,
                note: "",
            },
        ]
    }
}

/// The figures of a run, per server in the order of `kinds`.
pub struct Figures<'a> {
    pub kinds: &'a [Kind],
    pub cpus: &'a Cpus,
    pub throughput: &'a [Throughput],
    /// Per load (its label), instructions per request per server.
    pub instructions: &'a [(String, Vec<Option<f64>>)],
    pub idle: &'a [Idle],
}

pub fn report(plan: &Plan, figures: &Figures) -> String {
    let Figures {
        kinds,
        cpus,
        throughput,
        instructions,
        idle,
    } = *figures;
    let Plan {
        rounds,
        seconds,
        callgrind_warmup,
        callgrind_requests,
        quick,
        ..
    } = *plan;
    let table = Table { kinds };
    let mut out = String::new();
    if quick {
        out.push_str(
            "SHIELD_BENCH_QUICK: a smoke run with short samples; these figures are not comparable \
             to a full run.\n\n",
        );
    }
    // Each explanation only for the rows the run measured.
    if !throughput.is_empty() {
        out.push_str(&format!(
            "Throughput: median of {rounds} interleaved {seconds} s samples. "
        ));
    }
    out.push_str(
        "Ratios are shield's (aws-lc-rs) figure over the peer's: above 1x is better for a rate, \
         below 1x for a cost.\n\n",
    );
    out.push_str(&table.header());
    for figure in throughput {
        for row in figure.rows() {
            out.push_str(&table.row(&row));
        }
    }
    for (load, values) in instructions {
        out.push_str(&table.row(&Row {
            label: format!("user-space instructions per request, {load} (callgrind)"),
            values: values.clone(),
            decimals: 0,
            target: None,
            note: "lower is better, deterministic",
        }));
    }
    for held in idle {
        for row in held.rows() {
            out.push_str(&table.row(&row));
        }
    }
    let samples = || throughput.iter().flat_map(|t| t.samples.iter().flatten());
    let load_max = samples().map(|s| s.load_busy).fold(0.0, f64::max);
    let server_min = samples().map(|s| s.server_busy).fold(1.0, f64::min);
    let (server, load) = (cpus.server, cpus.load_list());
    out.push_str(&format!(
        "\nThe server under test runs alone on CPU {server}; the load clients (tls_load, oha) and the upstream nginx on CPU {load}. \
         Pinned to one CPU, shield runs one connection worker, haproxy one thread; nginx keeps its 2 workers, both on CPU {server}.\n"
    ));
    if !throughput.is_empty() {
        out.push_str(&format!(
            "\nLoad CPUs {load} were at most {:.0}% busy in any sample (server CPU {server} at least {:.0}%); a load side near 100% caps the rate, \
         which the budgeted row (the server's processes in a cgroup held to a share of one CPU) is there to rule out.\n\
         \nServer CPU rows: user plus system CPU time of the server's processes during a sample over the requests or handshakes it completed.\n",
            load_max * 100.0,
            server_min * 100.0
        ));
    }
    if !instructions.is_empty() {
        out.push_str(&format!(
        "\nInstruction rows: valgrind's callgrind, one server at a time on CPU {server} (nginx as one process, `master_process off`), \
         {callgrind_requests} requests after {callgrind_warmup} of warm-up, {CALLGRIND_CONCURRENCY} in flight; \
         repeatable within about 0.3% where wall-clock figures are not, but user space only: the kernel's share of a request is not in it.\n"
    ));
    }
    if !idle.is_empty() {
        out.push_str(
        "\nMemory: each server alone and fresh, the connections opened and one request served on each, then left idle. \
         nginx's is its master plus 2 workers, summed. Per connection: RSS held minus RSS at start, over the connections. \
         shield (ring) is shield built with `--features ring`.\n",
    );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rate: f64, cpu_us: f64, server_busy: f64, load_busy: f64) -> Sample {
        Sample {
            rate,
            cpu_us,
            server_busy,
            load_busy,
        }
    }

    fn rates(rates: &[f64]) -> Vec<Sample> {
        rates
            .iter()
            .map(|&r| sample(r, 1e6 / r, 1.0, 0.5))
            .collect()
    }

    const KINDS: [Kind; 4] = [
        Kind::Nginx,
        Kind::Haproxy,
        Kind::Shield("aws-lc-rs"),
        Kind::Shield("ring"),
    ];

    #[test]
    fn medians_of_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[5.0, 1.0, 4.0, 2.0, 3.0]), 3.0);
        // An even count takes the upper middle, not the mean of the two.
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        let per_server = [
            rates(&[100.0, 300.0, 200.0]),
            rates(&[10.0, 30.0, 20.0]),
            vec![],
        ];
        assert_eq!(
            medians(&per_server, |s| s.rate),
            [Some(200.0), Some(20.0), None]
        );
    }

    #[test]
    fn targets_against_nginx_or_the_better_peer() {
        let ratios = [(Kind::Nginx, 1.6), (Kind::Haproxy, 1.2)];
        assert!(Target::AtLeast(1.5, Against::Nginx).met(&ratios));
        assert!(!Target::AtLeast(1.5, Against::BetterPeer).met(&ratios));
        assert!(Target::AtLeast(1.2, Against::BetterPeer).met(&ratios));
        let costs = [(Kind::Nginx, 0.4), (Kind::Haproxy, 0.7)];
        assert!(Target::AtMost(0.5, Against::Nginx).met(&costs));
        assert!(!Target::AtMost(0.5, Against::BetterPeer).met(&costs));
        // No ratio at all (a peer not measured) is never met.
        assert!(!Target::AtLeast(1.0, Against::Nginx).met(&[]));
        assert!(!Target::AtMost(1.0, Against::BetterPeer).met(&[]));
    }

    #[test]
    fn rows_and_ratios() {
        let table = Table { kinds: &KINDS };
        assert_eq!(
            table.header(),
            "| figure | nginx | haproxy | shield (aws-lc-rs) | shield (ring) | shield/nginx | shield/haproxy | target |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        );
        let mut figure = Throughput::new(
            "h2 requests/s, 8 connections x 25 streams".into(),
            "request",
            &KINDS,
            Some(Target::AtLeast(1.5, Against::BetterPeer)),
        );
        for (samples, r) in figure
            .samples
            .iter_mut()
            .zip([20000.0, 30000.0, 45000.0, 40000.0])
        {
            samples.extend(rates(&[r * 0.9, r, r * 1.1]));
        }
        let [rate, cpu] = figure.rows();
        assert_eq!(
            table.row(&rate),
            "| h2 requests/s, 8 connections x 25 streams | 20000 | 30000 | 45000 | 40000 | 2.25x | 1.50x | >= 1.5x the better peer: met |\n"
        );
        assert_eq!(
            table.row(&cpu),
            "| server CPU per request, µs (h2 requests/s, 8 connections x 25 streams) | 50.0 | 33.3 | 22.2 | 25.0 | 0.44x | 0.67x | lower is better |\n"
        );
        let missing = Row {
            label: "instructions".into(),
            values: vec![Some(49_000.0), None, Some(26_000.0), None],
            decimals: 0,
            target: Some(Target::AtMost(0.5, Against::BetterPeer)),
            note: "",
        };
        assert_eq!(
            table.row(&missing),
            "| instructions | 49000 | - | 26000 | - | 0.53x | - | <= 0.5x the better peer: NOT met |\n"
        );
    }

    #[test]
    fn whole_table() {
        let cpus = Cpus {
            server: 0,
            load: vec![1],
        };
        let mut handshakes = Throughput::new(
            "full handshakes/s".into(),
            "handshake",
            &KINDS,
            Some(Target::AtLeast(2.0, Against::Nginx)),
        );
        for (s, r) in handshakes
            .samples
            .iter_mut()
            .zip([550.0, 700.0, 1832.0, 1772.0])
        {
            s.extend(rates(&[r]));
        }
        handshakes.samples[0][0].load_busy = 0.93;
        let memory = |start: u64, held: u64| {
            Some((
                Memory {
                    rss_kib: start,
                    pss_kib: start,
                },
                Memory {
                    rss_kib: held,
                    pss_kib: held,
                },
            ))
        };
        let idle = [Idle {
            what: "h2",
            connections: 10_000,
            memory: vec![
                memory(30_000, 430_000),
                memory(20_000, 520_000),
                memory(10_000, 160_000),
                None,
            ],
            target: None,
            per_connection_target: Some(Target::AtMost(0.5, Against::Nginx)),
        }];
        let instructions = [(
            "HTTP/1.1 keep-alive".to_owned(),
            vec![Some(49309.0), Some(40000.0), Some(26202.0), None],
        )];
        let figures = Figures {
            kinds: &KINDS,
            cpus: &cpus,
            throughput: &[handshakes],
            instructions: &instructions,
            idle: &idle,
        };
        let out = report(&Plan::FULL, &figures);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("Throughput: median of 5 interleaved 8 s samples."),
            "{out}"
        );
        for row in [
            "| full handshakes/s | 550 | 700 | 1832 | 1772 | 3.33x | 2.62x | >= 2x nginx: met |",
            "| user-space instructions per request, HTTP/1.1 keep-alive (callgrind) | 49309 | 40000 | 26202 | - | 0.53x | 0.66x | lower is better, deterministic |",
            "| RSS per idle h2 connection, KiB | 40.0 | 50.0 | 15.0 | - | 0.38x | 0.30x | <= 0.5x nginx: met |",
            "| RSS at 10000 idle h2 connections, MiB | 419.9 | 507.8 | 156.2 | - | 0.37x | 0.31x |  |",
        ] {
            assert!(lines.contains(&row), "{row} missing from\n{out}");
        }
        assert!(out.contains("Load CPUs 1 were at most 93% busy"), "{out}");
        assert!(
            out.contains("4000 requests after 400 of warm-up, 4 in flight"),
            "{out}"
        );
        assert!(!out.contains("SHIELD_BENCH_QUICK"), "{out}");
        let quick = report(&Plan::QUICK, &figures);
        assert!(quick.starts_with("SHIELD_BENCH_QUICK"), "{quick}");
        assert!(
            quick.contains("median of 1 interleaved 2 s samples"),
            "{quick}"
        );
        // SHIELD_BENCH_MEMORY_ONLY: the memory rows, explained alone.
        let memory_only = report(
            &Plan::FULL,
            &Figures {
                throughput: &[],
                instructions: &[],
                ..figures
            },
        );
        assert!(
            memory_only.starts_with("Ratios are shield's"),
            "{memory_only}"
        );
        for absent in [
            "Throughput:",
            "Load CPUs",
            "Instruction rows",
            "full handshakes",
        ] {
            assert!(!memory_only.contains(absent), "{absent} in\n{memory_only}");
        }
        assert!(
            memory_only.contains("RSS per idle h2 connection, KiB | 40.0"),
            "{memory_only}"
        );
    }
}
