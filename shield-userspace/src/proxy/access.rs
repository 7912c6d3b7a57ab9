//! The access log (`[log].access`): one line per request on target
//! `shield::access`, written when the response has gone out (or the
//! client left), in the daemon's `[log].format`.
//!
//! The lines are formatted here, not by `tracing`'s formatter, so that the
//! JSON object has exactly the documented fields at its top level. They go
//! through the daemon's non-blocking writer (`logging`): a slow journal
//! drops and counts lines instead of holding up a worker.

use std::{
    net::IpAddr,
    str::FromStr as _,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use crate::{config::LogFormat, logging};

/// `[log].access`, read once per request: a reload flips it.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Relaxed);
}

pub(super) fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// What the request head tells, taken when it arrives.
#[derive(Debug)]
pub(super) struct Head {
    started: Instant,
    method: String,
    /// Without the query, which may carry credentials.
    path: String,
    protocol: &'static str,
    /// `CF-Connecting-IP`, when it is an address. Every connection that
    /// reaches a request presented the AOP client certificate, so the
    /// field is Cloudflare's statement, not the client's.
    client_ip: Option<IpAddr>,
    cf_ray: Option<String>,
    request_id: String,
}

impl Head {
    /// `target` is the request target as sent; the fields are the raw
    /// values of `CF-Connecting-IP` and `CF-Ray`.
    pub(super) fn new(
        method: &str,
        target: &str,
        protocol: &'static str,
        connecting_ip: Option<&[u8]>,
        cf_ray: Option<&[u8]>,
        request_id: &str,
    ) -> Head {
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        Head {
            started: Instant::now(),
            method: method.to_owned(),
            path: path.to_owned(),
            protocol,
            client_ip: connecting_ip
                .and_then(|value| std::str::from_utf8(value).ok())
                .and_then(|value| IpAddr::from_str(value.trim()).ok()),
            cf_ray: cf_ray
                .and_then(|value| std::str::from_utf8(value).ok())
                .map(str::to_owned),
            request_id: request_id.to_owned(),
        }
    }
}

/// How the request ended.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcome {
    pub status: u16,
    /// Response body bytes written to the client.
    pub bytes_sent: u64,
    /// From the request sent upstream to the upstream's response head;
    /// `None` when shield answered itself.
    pub upstream: Option<Duration>,
}

/// Writes the request's line.
pub(super) fn log(head: &Head, site: &str, client_cert_sha256: &str, outcome: Outcome) {
    let line = line(
        logging::format(),
        SystemTime::now(),
        head,
        site,
        client_cert_sha256,
        outcome,
    );
    if !logging::write_access_line(line.as_bytes()) {
        // No daemon writer (a test's in-process server): the log is
        // still there to be seen.
        eprint!("{line}");
    }
}

fn millis(duration: Duration) -> f64 {
    // Microsecond resolution is plenty and keeps the number short.
    (duration.as_micros() as f64) / 1000.0
}

fn line(
    format: LogFormat,
    now: SystemTime,
    head: &Head,
    site: &str,
    client_cert_sha256: &str,
    outcome: Outcome,
) -> String {
    let time = humantime::format_rfc3339_millis(now).to_string();
    let duration_ms = millis(head.started.elapsed());
    let upstream_ms = outcome.upstream.map(millis);
    match format {
        LogFormat::Json => {
            // Written field by field: a `serde_json::Value` map costs more
            // than the rest of a request's proxying.
            let mut out = String::with_capacity(512);
            let client_ip = head.client_ip.map(|ip| ip.to_string());
            out.push_str("{\"time\":\"");
            out.push_str(&time);
            out.push_str("\",\"target\":\"");
            out.push_str(logging::ACCESS_TARGET);
            out.push('"');
            json_str(&mut out, "site", Some(site));
            json_str(&mut out, "client_ip", client_ip.as_deref());
            json_str(&mut out, "cf_ray", head.cf_ray.as_deref());
            json_str(&mut out, "method", Some(&head.method));
            json_str(&mut out, "path", Some(&head.path));
            json_str(&mut out, "protocol", Some(head.protocol));
            json_raw(
                &mut out,
                "status",
                itoa::Buffer::new().format(outcome.status),
            );
            json_raw(
                &mut out,
                "bytes_sent",
                itoa::Buffer::new().format(outcome.bytes_sent),
            );
            json_raw(&mut out, "duration_ms", &format!("{duration_ms:.3}"));
            match upstream_ms {
                Some(ms) => json_raw(&mut out, "upstream_ms", &format!("{ms:.3}")),
                None => json_raw(&mut out, "upstream_ms", "null"),
            }
            json_str(&mut out, "client_cert_sha256", Some(client_cert_sha256));
            json_str(&mut out, "request_id", Some(&head.request_id));
            out.push_str("}\n");
            out
        }
        LogFormat::Text => {
            let mut text = format!("{time}  INFO {}:", logging::ACCESS_TARGET);
            let mut field = |name: &str, value: &str| {
                text.push(' ');
                text.push_str(name);
                text.push('=');
                push_logfmt(&mut text, value);
            };
            field("site", site);
            field(
                "client_ip",
                &head.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            );
            field("cf_ray", head.cf_ray.as_deref().unwrap_or(""));
            field("method", &head.method);
            field("path", &head.path);
            field("protocol", head.protocol);
            field("status", itoa::Buffer::new().format(outcome.status));
            field("bytes_sent", itoa::Buffer::new().format(outcome.bytes_sent));
            field("duration_ms", &format!("{duration_ms:.3}"));
            field(
                "upstream_ms",
                &upstream_ms.map(|ms| format!("{ms:.3}")).unwrap_or_default(),
            );
            field("client_cert_sha256", client_cert_sha256);
            field("request_id", &head.request_id);
            text.push('\n');
            text
        }
    }
}

/// `,"name":value` with a value that is JSON already.
fn json_raw(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    out.push_str(value);
}

/// `,"name":"value"` (escaped), or `null` for `None`.
fn json_str(out: &mut String, name: &str, value: Option<&str>) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    match value {
        Some(value) => push_json_string(out, value),
        None => out.push_str("null"),
    }
}

/// `value` as a JSON string: quotes, backslashes and control characters
/// escaped (RFC 8259 7), the rest as it is.
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A logfmt value: bare when it is plain, else a quoted JSON string, so a
/// path with spaces or quotes cannot forge another field or line.
fn push_logfmt(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if plain {
        out.push_str(value);
    } else {
        push_json_string(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head::new(
            "GET",
            "/a b?token=secret",
            "HTTP/2",
            Some(b"198.51.100.7"),
            Some(b"8a1b2c3d4e5f6789-AMS"),
            "0123456789abcdef",
        )
    }

    const OUTCOME: Outcome = Outcome {
        status: 200,
        bytes_sent: 1234,
        upstream: Some(Duration::from_micros(2500)),
    };

    /// The hand-written escaper against serde_json's parser, on strings
    /// heavy in what needs escaping.
    #[test]
    fn json_strings_round_trip() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = [
            '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{1f}', '\u{7f}', 'a', '/', 'é', '\u{2028}',
            '😀',
        ];
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let value: String = (0..len)
                .map(|_| {
                    if rng.random_bool(0.2) {
                        char::from_u32(rng.random_range(0..0x3000)).unwrap_or('x')
                    } else {
                        alphabet[rng.random_range(0..alphabet.len())]
                    }
                })
                .collect();
            let mut out = String::new();
            push_json_string(&mut out, &value);
            assert_eq!(
                serde_json::from_str::<String>(&out).unwrap(),
                value,
                "{out}"
            );
            assert!(!out.contains('\n'), "{out}");
        }
    }

    #[test]
    fn json_lines_have_the_documented_fields() {
        let text = line(
            LogFormat::Json,
            SystemTime::UNIX_EPOCH,
            &head(),
            "example.com",
            "ab12",
            OUTCOME,
        );
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in [
            "time",
            "site",
            "client_ip",
            "cf_ray",
            "method",
            "path",
            "protocol",
            "status",
            "bytes_sent",
            "duration_ms",
            "upstream_ms",
            "client_cert_sha256",
            "request_id",
        ] {
            assert!(value.get(key).is_some(), "{key} missing: {value}");
        }
        assert_eq!(value["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["client_ip"], "198.51.100.7");
        assert_eq!(value["cf_ray"], "8a1b2c3d4e5f6789-AMS");
        assert_eq!(value["path"], "/a b", "the query stays out");
        assert_eq!(value["protocol"], "HTTP/2");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes_sent"], 1234);
        assert_eq!(value["upstream_ms"], 2.5);
        assert_eq!(value["request_id"], "0123456789abcdef");
    }

    #[test]
    fn missing_or_bad_fields_are_null_and_text_cannot_be_forged() {
        let head = Head::new(
            "GET",
            "/x\" status=999\nforged",
            "HTTP/1.1",
            Some(b"not an address"),
            None,
            "id",
        );
        let outcome = Outcome {
            upstream: None,
            ..OUTCOME
        };
        let json = line(
            LogFormat::Json,
            SystemTime::UNIX_EPOCH,
            &head,
            "s",
            "c",
            outcome,
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(value["client_ip"].is_null() && value["cf_ray"].is_null());
        assert!(value["upstream_ms"].is_null());
        let text = line(
            LogFormat::Text,
            SystemTime::UNIX_EPOCH,
            &head,
            "s",
            "c",
            outcome,
        );
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.contains(" protocol=HTTP/1.1 status=200 "), "{text}");
        assert!(
            text.starts_with(
                "1970-01-01T00:00:00.000Z  INFO shield::access: site=s client_ip=\"\""
            ),
            "{text}"
        );
        assert!(text.contains(r#"path="/x\" status=999\nforged""#), "{text}");
    }
}
