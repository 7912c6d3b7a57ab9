//! The statistics and the results table: medians of the interleaved
//! samples, the shield/nginx ratios and whether each target is met.

use super::{
    params::{Plan, BUDGET_PERCENT, CALLGRIND_CONCURRENCY, CONCURRENCY},
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

/// Per server, the median of one field of its samples.
fn medians(samples: &[Vec<Sample>], field: fn(&Sample) -> f64) -> Vec<f64> {
    samples
        .iter()
        .map(|s| median(&s.iter().map(field).collect::<Vec<_>>()))
        .collect()
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A rate row: each server's median rate, shield (the second) over nginx
/// (the first), and whether that reaches `target`.
fn rate_row(out: &mut String, label: &str, samples: &[Vec<Sample>], target: f64) {
    let medians = medians(samples, |s| s.rate);
    let ratio = medians[1] / medians[0];
    out.push_str(&format!("| {label} |"));
    for m in &medians {
        out.push_str(&format!(" {m:.0} |"));
    }
    let verdict = if ratio >= target { "met" } else { "NOT met" };
    out.push_str(&format!(" {ratio:.2}x | >= {target}x: {verdict} |\n"));
}

/// A CPU row. Lower is better here, so the ratio is turned around: above
/// 1x, shield spends less CPU than nginx on the same work.
fn cpu_row(out: &mut String, label: &str, samples: &[Vec<Sample>]) {
    let medians = medians(samples, |s| s.cpu_us);
    let ratio = medians[0] / medians[1];
    out.push_str(&format!("| {label} |"));
    for m in &medians {
        out.push_str(&format!(" {m:.1} |"));
    }
    out.push_str(&format!(
        " {ratio:.2}x (nginx/shield) | lower is better |\n"
    ));
}

/// The figures of a run, per server in the order of `kinds` (nginx first,
/// then shield's builds); `instructions` and `memory` for the first two.
pub struct Figures<'a> {
    pub kinds: &'a [Kind],
    pub cpus: &'a Cpus,
    pub handshakes: &'a [Vec<Sample>],
    pub keepalive: &'a [Vec<Sample>],
    pub budgeted: &'a [Vec<Sample>],
    pub instructions: &'a [f64],
    pub memory: &'a [(Memory, Memory)],
}

pub fn report(plan: &Plan, figures: &Figures) -> String {
    let Figures {
        kinds,
        cpus,
        handshakes,
        keepalive,
        budgeted,
        instructions,
        memory,
    } = *figures;
    let names: Vec<String> = kinds
        .iter()
        .map(|kind| match kind {
            Kind::Nginx => "nginx".to_owned(),
            Kind::Shield(p) => format!("shield ({p})"),
        })
        .collect();
    let Plan {
        rounds,
        seconds,
        idle_connections,
        callgrind_warmup,
        callgrind_requests,
        quick,
    } = *plan;
    let mut out = String::new();
    if quick {
        out.push_str(
            "SHIELD_BENCH_QUICK: a smoke run with short samples; these figures are not comparable \
             to a full run.\n\n",
        );
    }
    out.push_str(&format!(
        "Throughput: median of {rounds} interleaved {seconds} s samples, {CONCURRENCY} connections.\n\n"
    ));
    out.push_str("| figure | ");
    out.push_str(&names.join(" | "));
    out.push_str(" | shield/nginx | target |\n| --- |");
    out.push_str(&" ---: |".repeat(names.len() + 1));
    out.push_str(" --- |\n");
    rate_row(&mut out, "full handshakes/s", handshakes, 2.0);
    cpu_row(&mut out, "server CPU per full handshake, µs", handshakes);
    rate_row(&mut out, "keep-alive requests/s", keepalive, 1.2);
    cpu_row(&mut out, "server CPU per keep-alive request, µs", keepalive);
    rate_row(
        &mut out,
        &format!("keep-alive requests/s, server held to {BUDGET_PERCENT}% of a CPU"),
        budgeted,
        1.2,
    );
    // As for CPU, above 1x shield does less; ring's build is not counted.
    if let [nginx, shield] = instructions {
        out.push_str(&format!(
            "| user-space instructions per keep-alive request (callgrind) | {nginx:.0} | {shield:.0} | - | {:.2}x (nginx/shield) | lower is better, deterministic |\n",
            nginx / shield
        ));
    }
    if let [(nginx_idle, nginx), (shield_idle, shield)] = memory {
        let ratio = shield.rss_kib as f64 / nginx.rss_kib as f64;
        let verdict = if ratio <= 1.0 { "met" } else { "NOT met" };
        out.push_str(&format!(
            "| RSS at {idle_connections} idle mTLS connections, MiB | {:.1} | {:.1} | - | {ratio:.2}x | <= 1x: {verdict} |\n",
            mib(nginx.rss_kib),
            mib(shield.rss_kib)
        ));
        out.push_str(&format!(
            "| PSS at {idle_connections} idle, MiB | {:.1} | {:.1} | - | {:.2}x | |\n",
            mib(nginx.pss_kib),
            mib(shield.pss_kib),
            shield.pss_kib as f64 / nginx.pss_kib as f64
        ));
        out.push_str(&format!(
            "| RSS at start, MiB | {:.1} | {:.1} | - | {:.2}x | |\n",
            mib(nginx_idle.rss_kib),
            mib(shield_idle.rss_kib),
            shield_idle.rss_kib as f64 / nginx_idle.rss_kib as f64
        ));
    }
    let all = || handshakes.iter().chain(keepalive).flatten();
    let budget_load_max = budgeted
        .iter()
        .flatten()
        .map(|s| s.load_busy)
        .fold(0.0, f64::max);
    let load_max = all().map(|s| s.load_busy).fold(0.0, f64::max);
    let server_min = all().map(|s| s.server_busy).fold(1.0, f64::min);
    let (server, load) = (cpus.server, cpus.load_list());
    out.push_str(&format!(
        "\nThe server under test runs alone on CPU {server}; the load clients (tls_load, oha) and the upstream nginx on CPU {load}. \
         Pinned to one CPU, shield runs one connection worker; nginx keeps its 2 workers, both on CPU {server}.\n\
         \nLoad CPUs {load} were at most {:.0}% busy in any sample (server CPU {server} at least {:.0}%); a load side near 100% caps the rate.\n\
         \nServer CPU rows: user plus system CPU time of the server's processes during a sample over the requests or handshakes it completed; \
         their ratio is nginx/shield, so above 1x shield spends less.\n",
        load_max * 100.0,
        server_min * 100.0
    ));
    out.push_str(&format!(
        "\nBudgeted row: the same keep-alive load with the server's processes in a cgroup whose CPU quota is {BUDGET_PERCENT}% of one CPU, \
         so that the server, not the load side, sets the rate (load CPUs at most {:.0}% busy in those samples).\n",
        budget_load_max * 100.0
    ));
    out.push_str(&format!(
        "\nInstructions row: valgrind's callgrind, one server at a time on CPU {server} (nginx as one process, `master_process off`), \
         {callgrind_requests} keep-alive requests on {CALLGRIND_CONCURRENCY} connections after {callgrind_warmup} of warm-up; \
         repeatable within about 0.3% where wall-clock figures are not, but user space only: the kernel's share of a request is not in it. \
         Ratio nginx/shield, so above 1x shield executes fewer.\n"
    ));
    out.push_str(
        "\nnginx memory is its master plus 2 workers, summed. shield (ring) is shield built with `--features ring`.\n",
    );
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

    #[test]
    fn medians_of_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[5.0, 1.0, 4.0, 2.0, 3.0]), 3.0);
        // An even count takes the upper middle, not the mean of the two.
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        let per_server = [rates(&[100.0, 300.0, 200.0]), rates(&[10.0, 30.0, 20.0])];
        assert_eq!(medians(&per_server, |s| s.rate), [200.0, 20.0]);
    }

    #[test]
    fn rows_and_ratios() {
        let samples = [
            rates(&[500.0, 550.0, 600.0]),
            rates(&[1800.0, 1832.0, 1900.0]),
        ];
        let mut out = String::new();
        rate_row(&mut out, "full handshakes/s", &samples, 2.0);
        assert_eq!(
            out,
            "| full handshakes/s | 550 | 1832 | 3.33x | >= 2x: met |\n"
        );
        let mut out = String::new();
        let level = [rates(&[550.0]), rates(&[550.0])];
        rate_row(&mut out, "keep-alive requests/s", &level, 1.2);
        assert_eq!(
            out,
            "| keep-alive requests/s | 550 | 550 | 1.00x | >= 1.2x: NOT met |\n"
        );
        let cpu = [
            vec![sample(1.0, 52.8, 1.0, 0.5)],
            vec![sample(1.0, 31.0, 1.0, 0.5)],
        ];
        let mut out = String::new();
        cpu_row(&mut out, "server CPU per keep-alive request, µs", &cpu);
        assert_eq!(
            out,
            "| server CPU per keep-alive request, µs | 52.8 | 31.0 | 1.70x (nginx/shield) | lower is better |\n"
        );
    }

    #[test]
    fn whole_table() {
        let kinds = [Kind::Nginx, Kind::Shield("aws-lc-rs"), Kind::Shield("ring")];
        let cpus = Cpus {
            server: 0,
            load: vec![1],
        };
        let three = |a, b, c| vec![rates(&[a]), rates(&[b]), rates(&[c])];
        let mut keepalive = three(18633.0, 28310.0, 28666.0);
        keepalive[0][0].load_busy = 0.93;
        let budgeted = three(9818.0, 13362.0, 14030.0);
        let memory = [
            (
                Memory {
                    rss_kib: 29_900,
                    pss_kib: 20_000,
                },
                Memory {
                    rss_kib: 235_418,
                    pss_kib: 219_238,
                },
            ),
            (
                Memory {
                    rss_kib: 10_547,
                    pss_kib: 9_000,
                },
                Memory {
                    rss_kib: 135_578,
                    pss_kib: 134_042,
                },
            ),
        ];
        let figures = Figures {
            kinds: &kinds,
            cpus: &cpus,
            handshakes: &three(550.0, 1832.0, 1772.0),
            keepalive: &keepalive,
            budgeted: &budgeted,
            instructions: &[49309.0, 26202.0],
            memory: &memory,
        };
        let table = report(&Plan::FULL, &figures);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "Throughput: median of 5 interleaved 8 s samples, 64 connections.",
                "",
                "| figure | nginx | shield (aws-lc-rs) | shield (ring) | shield/nginx | target |",
                "| --- | ---: | ---: | ---: | ---: | --- |",
                "| full handshakes/s | 550 | 1832 | 1772 | 3.33x | >= 2x: met |",
            ]
        );
        for row in [
            "| keep-alive requests/s | 18633 | 28310 | 28666 | 1.52x | >= 1.2x: met |",
            "| keep-alive requests/s, server held to 50% of a CPU | 9818 | 13362 | 14030 | 1.36x | >= 1.2x: met |",
            "| user-space instructions per keep-alive request (callgrind) | 49309 | 26202 | - | 1.88x (nginx/shield) | lower is better, deterministic |",
            "| RSS at 10000 idle mTLS connections, MiB | 229.9 | 132.4 | - | 0.58x | <= 1x: met |",
            "| RSS at start, MiB | 29.2 | 10.3 | - | 0.35x | |",
        ] {
            assert!(lines.contains(&row), "{row} missing from\n{table}");
        }
        assert!(
            table.contains("Load CPUs 1 were at most 93% busy"),
            "{table}"
        );
        assert!(
            table.contains("4000 keep-alive requests on 4 connections after 400 of warm-up"),
            "{table}"
        );
        assert!(!table.contains("SHIELD_BENCH_QUICK"), "{table}");
        let quick = report(&Plan::QUICK, &figures);
        assert!(quick.starts_with("SHIELD_BENCH_QUICK"), "{quick}");
        assert!(
            quick.contains("median of 1 interleaved 2 s samples"),
            "{quick}"
        );
    }
}
