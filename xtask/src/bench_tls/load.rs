//! The load clients, on the load CPUs: shield-userspace's `tls_load`
//! example (full handshakes, held idle connections) and oha (keep-alive
//! requests), with their output read back.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, ChildStdin, Stdio},
};

use anyhow::{bail, Context as _};

use super::{
    conf::{path_str, Pki},
    params::{CONCURRENCY, NAME},
    servers::{pinned, pinned_output},
};
use crate::setup::OHA_VERSION;

/// Requests over reused connections, as oha sends them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keepalive {
    /// HTTP/1.1, one request at a time on each connection.
    H1 { connections: usize },
    /// h2 (ALPN), `streams` requests in flight on each connection.
    H2 { connections: usize, streams: usize },
}

impl Keepalive {
    /// For the table: "HTTP/1.1 keep-alive, 64 connections".
    pub fn label(self) -> String {
        match self {
            Keepalive::H1 { connections } => {
                format!("HTTP/1.1 keep-alive, {connections} connections")
            }
            Keepalive::H2 {
                connections,
                streams,
            } => format!("h2, {connections} connections x {streams} streams"),
        }
    }

    /// oha's arguments for it.
    pub fn oha_args(self) -> Vec<String> {
        match self {
            Keepalive::H1 { connections } => vec!["-c".into(), connections.to_string()],
            Keepalive::H2 {
                connections,
                streams,
            } => vec![
                "--http2".into(),
                "-c".into(),
                connections.to_string(),
                "-p".into(),
                streams.to_string(),
            ],
        }
    }
}

/// The load side: the clients, their certificate and their CPUs.
pub struct Clients<'a> {
    /// shield-userspace's `tls_load` example.
    pub tls_load: &'a Path,
    pub pki: &'a Pki,
    /// The load CPUs, a taskset list.
    pub cpus: &'a str,
}

impl Clients<'_> {
    fn tls_load_args<'s>(&'s self, addr: &'s str) -> Vec<&'s str> {
        vec![
            "--addr",
            addr,
            "--name",
            NAME,
            "--cert",
            path_str(&self.pki.client_cert),
            "--key",
            path_str(&self.pki.client_key),
        ]
    }

    /// Full handshakes per second on `port` for `seconds`, and how many
    /// completed.
    pub fn handshake_rate(&self, port: u16, seconds: u32) -> anyhow::Result<(f64, f64)> {
        let addr = format!("127.0.0.1:{port}");
        let mut args = self.tls_load_args(&addr);
        let concurrency = CONCURRENCY.to_string();
        let seconds = seconds.to_string();
        args.extend([
            "handshakes",
            "--concurrency",
            &concurrency,
            "--seconds",
            &seconds,
        ]);
        let out = pinned_output(self.cpus, path_str(self.tls_load), &args)?;
        let errors = number_after(&out, "errors=").unwrap_or(0.0);
        if errors > 0.0 {
            bail!("handshake client saw {errors} errors on port {port}: {out}");
        }
        let rate = number_after(&out, "per_second=");
        let count = number_after(&out, "handshakes_ok=");
        rate.zip(count)
            .with_context(|| format!("unexpected tls_load output {out:?}; rebuild its example"))
    }

    /// Requests per second of `load` on `port` for `seconds`, and how
    /// many completed with a 200.
    pub fn keepalive_rate(
        &self,
        port: u16,
        seconds: u32,
        load: Keepalive,
    ) -> anyhow::Result<(f64, f64)> {
        let duration = format!("{seconds}s");
        let mut args = vec!["-z".to_owned(), duration];
        args.extend(load.oha_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = oha(self.pki, port, self.cpus, &args)?;
        let count = oha_200s(&out, port)?;
        let rate = number_after(&out, "\"requestsPerSec\":").with_context(|| {
            format!("unexpected oha output {out:?}; is oha {OHA_VERSION} first on the PATH?")
        })?;
        Ok((rate, count))
    }
}

/// oha with the client certificate against `port`, on the load CPUs
/// (`cpus`, a taskset list), for `how_long` (`-z` or `-n`, and the load's
/// arguments); its JSON summary.
pub fn oha(pki: &Pki, port: u16, cpus: &str, how_long: &[&str]) -> anyhow::Result<String> {
    let url = format!("https://{NAME}:{port}/");
    let mut args = vec![
        "--no-tui",
        "--output-format",
        "json",
        "--ipv4",
        "--insecure",
        "--cert",
        path_str(&pki.client_cert),
        "--key",
        path_str(&pki.client_key),
    ];
    args.extend(how_long);
    args.push(&url);
    pinned_output(cpus, "oha", &args)
}

/// How many responses in oha's summary `out` were 200s; an error if any
/// other status came back or more than 0.1% of requests failed (a timed
/// run ends with a few in flight).
pub fn oha_200s(out: &str, port: u16) -> anyhow::Result<f64> {
    let success = number_after(out, "\"successRate\":").unwrap_or(0.0);
    let codes = out
        .split_once("\"statusCodeDistribution\":")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(codes, _)| codes.trim().trim_start_matches('{').trim());
    let only_200 = codes.is_some_and(|c| c.starts_with("\"200\"") && c.matches(':').count() == 1);
    if success < 0.999 || !only_200 {
        bail!("oha on port {port}: success rate {success}, status codes {codes:?}");
    }
    codes
        .and_then(|codes| number_after(codes, "\"200\":"))
        .with_context(|| {
            format!("unexpected oha output {out:?}; is oha {OHA_VERSION} first on the PATH?")
        })
}

/// The number right after `key` (enough JSON for oha's summary).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `tls_load hold`: idle connections open until dropped.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    pub held: usize,
}

impl Holder {
    /// `count` connections to `port`, each with one request served over
    /// HTTP/1.1 or, with `http2`, over h2.
    pub fn open(clients: &Clients, port: u16, count: usize, http2: bool) -> anyhow::Result<Holder> {
        let addr = format!("127.0.0.1:{port}");
        let mut args = clients.tls_load_args(&addr);
        let count = count.to_string();
        args.extend(["hold", "--count", &count]);
        if http2 {
            args.push("--http2");
        }
        let mut child = pinned(clients.cpus, clients.tls_load, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start tls_load")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("tls_load has no stdout")?;
        let mut holder = Holder {
            child,
            stdin,
            held: 0,
        };
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line.starts_with("held=") {
                holder.held = number_after(&line, "held=").unwrap_or(0.0) as usize;
                return Ok(holder);
            }
        }
        bail!("tls_load ended before it held its connections")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing stdin tells it to close its connections and exit.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_arguments() {
        assert_eq!(Keepalive::H1 { connections: 64 }.oha_args(), ["-c", "64"]);
        let h2 = Keepalive::H2 {
            connections: 8,
            streams: 25,
        };
        assert_eq!(h2.oha_args(), ["--http2", "-c", "8", "-p", "25"]);
        assert_eq!(h2.label(), "h2, 8 connections x 25 streams");
    }

    #[test]
    fn numbers_after_keys() {
        let out = "handshakes_ok=14655 errors=0 seconds=8.00 per_second=1831.9\n";
        assert_eq!(number_after(out, "handshakes_ok="), Some(14655.0));
        assert_eq!(number_after(out, "errors="), Some(0.0));
        assert_eq!(number_after(out, "per_second="), Some(1831.9));
        assert_eq!(number_after(out, "missing="), None);
        assert_eq!(number_after("{\"x\": -1.5e3,", "\"x\":"), Some(-1500.0));
        assert_eq!(number_after("{\"x\": null}", "\"x\":"), None);
    }

    /// The shape of oha 1.16's `--output-format json` summary, cut down.
    fn summary(success: &str, codes: &str) -> String {
        format!(
            "{{\"summary\":{{\"successRate\":{success},\"total\":8.0,\"requestsPerSec\":28310.4}},\
             \"statusCodeDistribution\":{{{codes}}},\"errorDistribution\":{{}}}}"
        )
    }

    #[test]
    fn oha_only_200s() {
        let out = summary("1.0", "\"200\":226483");
        assert_eq!(oha_200s(&out, 1).unwrap(), 226483.0);
        assert_eq!(number_after(&out, "\"requestsPerSec\":"), Some(28310.4));
        // A timed run ends with a few requests in flight.
        assert_eq!(
            oha_200s(&summary("0.9995", "\"200\":1000"), 1).unwrap(),
            1000.0
        );
        assert!(oha_200s(&summary("0.99", "\"200\":1000"), 1).is_err());
        assert!(oha_200s(&summary("1.0", "\"200\":999,\"502\":1"), 1).is_err());
        assert!(oha_200s(&summary("1.0", "\"502\":1000"), 1).is_err());
        assert!(oha_200s(&summary("1.0", ""), 1).is_err());
        assert!(oha_200s("not json", 1).is_err());
    }
}
