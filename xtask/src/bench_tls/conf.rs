//! The files the servers run with: the bench's certificates and the
//! nginx and shield configs, written from templates.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::params::NAME;
use shield_tests::pki::{self, Usage};

/// A CA, a server leaf for `localhost`, a client leaf; all ECDSA P-256.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The server certificate and its key in one file, as haproxy's `crt`
    /// takes them.
    pub server_bundle: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn make(dir: &Path) -> anyhow::Result<Pki> {
        const DAYS: u32 = 2;
        let ca = pki::ca(dir, "ca", "shield bench CA", DAYS)?;
        let server = pki::leaf(dir, "server", NAME, &ca, Usage::Server(NAME), DAYS)?;
        let client = pki::leaf(
            dir,
            "client",
            "shield bench client",
            &ca,
            Usage::Client,
            DAYS,
        )?;
        let server_bundle = dir.join("server-bundle.pem");
        let mut bundle = fs::read(&server.cert)
            .with_context(|| format!("cannot read {}", server.cert.display()))?;
        bundle.extend(
            fs::read(&server.key)
                .with_context(|| format!("cannot read {}", server.key.display()))?,
        );
        fs::write(&server_bundle, bundle)
            .with_context(|| format!("cannot write {}", server_bundle.display()))?;
        Ok(Pki {
            ca: ca.cert,
            server_cert: server.cert,
            server_key: server.key,
            server_bundle,
            client_cert: client.cert,
            client_key: client.key,
        })
    }
}

/// Paths here are made by the bench under the target directory; a
/// non-UTF-8 one would come from the user's CARGO_TARGET_DIR and shows as
/// "?".
pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or("?")
}

/// The upstream both servers proxy to: one worker, a fixed `200 ok`.
pub fn upstream_conf(work: &Path, port: u16) -> String {
    format!(
        "worker_processes 1;
pid {work}/upstream.pid;
error_log {work}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
",
        work = work.display()
    )
}

/// How the nginx under test runs.
#[derive(Clone, Copy)]
pub enum Processes {
    /// A master and 2 workers, as deployed.
    Workers,
    /// One process that serves itself (`master_process off`), so that under
    /// valgrind the process counted is the one doing the work.
    One,
}

/// The nginx under test: the same files, protocol versions (nginx 1.22
/// leaves TLS 1.3 out unless told), timeouts and upstream pool as shield.
/// No access log, since shield writes none per request. `nofile` is the
/// descriptor limit its workers may raise themselves to.
pub fn nginx_conf(
    work: &Path,
    pki: &Pki,
    port: u16,
    upstream: &str,
    processes: Processes,
    nofile: u64,
) -> String {
    let processes = match processes {
        Processes::Workers => "worker_processes 2;",
        Processes::One => "worker_processes 1;\nmaster_process off;",
    };
    format!(
        "{processes}
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    upstream app {{
        server {upstream_addr};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        server_name {NAME};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        client_header_timeout 10s;
        keepalive_timeout 900s;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        work = work.display(),
        upstream_addr = upstream.trim_start_matches("http://"),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
    )
}

/// The haproxy under test: one thread, the same files and client CA
/// (`verify required`), h2 and HTTP/1.1 by ALPN, the timeouts shield and
/// nginx have, and upstream connections shared between clients
/// (`http-reuse always`). No log, as for the others.
///
/// haproxy sizes its descriptor need as twice `maxconn` and refuses to
/// start when the limit is lower, although an idle client connection
/// holds one descriptor and no upstream one; `no strict-limits` makes that
/// a warning, so 10,000 idle connections fit in a 20,000 limit too.
pub fn haproxy_conf(work: &Path, pki: &Pki, port: u16, upstream: &str, nofile: u64) -> String {
    let maxconn = nofile.saturating_sub(500);
    format!(
        "global
    nbthread 1
    maxconn {maxconn}
    no strict-limits
    pidfile {work}/haproxy.pid
    log stderr format short local0 warning
defaults
    mode http
    log global
    option dontlog-normal
    timeout connect 5s
    timeout client 900s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 900s
frontend tls
    bind 127.0.0.1:{port} ssl crt {bundle} ca-file {ca} verify required alpn h2,http/1.1 ssl-min-ver TLSv1.2
    default_backend app
backend app
    http-reuse always
    server app {upstream_addr}
",
        work = work.display(),
        bundle = pki.server_bundle.display(),
        ca = pki.ca.display(),
        upstream_addr = upstream.trim_start_matches("http://"),
    )
}

/// shield, TLS only: one site, no XDP interfaces, no port 80, metrics on
/// `metrics` (nothing scrapes them, but the listener is always there).
/// What [`shield_conf`] gains for [`super::servers::Kind::ShieldAccessLog`].
pub const ACCESS_LOG: &str = "\n[log]\naccess = true\nformat = \"json\"\n";

pub fn shield_conf(work: &Path, pki: &Pki, port: u16, upstream: &str, metrics: u16) -> String {
    format!(
        "[ranges]
refresh = \"off\"
cache = \"{work}/ranges.json\"

[metrics]
listen = \"127.0.0.1:{metrics}\"

[http]
action = \"off\"

[[site]]
server_names = [\"{NAME}\"]
listen = \"127.0.0.1:{port}\"
cert = \"{cert}\"
key = \"{key}\"
client_ca = [\"{ca}\"]
upstream = \"{upstream}\"
max_connections = 20000
",
        work = work.display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
    )
}

/// Writes `conf` to the work directory as `name.conf` and returns nginx's
/// arguments to run it in the foreground.
pub fn nginx_args(work: &Path, name: &str, conf: &str) -> anyhow::Result<Vec<String>> {
    let path = work.join(format!("{name}.conf"));
    fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(vec![
        "-p".into(),
        work.display().to_string(),
        "-e".into(),
        work.join(format!("{name}-error.log")).display().to_string(),
        "-c".into(),
        path.display().to_string(),
        "-g".into(),
        "daemon off;".into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> Pki {
        let at = |name: &str| PathBuf::from(format!("/w/{name}.pem"));
        Pki {
            ca: at("ca"),
            server_cert: at("server"),
            server_key: at("server-key"),
            server_bundle: at("server-bundle"),
            client_cert: at("client"),
            client_key: at("client-key"),
        }
    }

    /// Braces balance: an unescaped `{` in a template would fail to
    /// compile, a lost `}}` would not.
    fn balanced(conf: &str) -> bool {
        conf.matches('{').count() == conf.matches('}').count()
    }

    #[test]
    fn nginx_under_test() {
        let work = Path::new("/w");
        let conf = nginx_conf(
            work,
            &pki(),
            4433,
            "http://127.0.0.1:8080",
            Processes::Workers,
            4096,
        );
        assert!(balanced(&conf), "{conf}");
        assert!(
            conf.starts_with("worker_processes 2;\nworker_rlimit_nofile 4096;\n"),
            "{conf}"
        );
        assert!(!conf.contains("master_process"), "{conf}");
        for line in [
            "pid /w/nginx.pid;",
            "server 127.0.0.1:8080;",
            "listen 127.0.0.1:4433 ssl http2 backlog=4096;",
            "server_name localhost;",
            "ssl_certificate /w/server.pem;",
            "ssl_certificate_key /w/server-key.pem;",
            "ssl_client_certificate /w/ca.pem;",
            "ssl_verify_client on;",
            "proxy_set_header Connection \"\";",
        ] {
            assert!(conf.contains(line), "{line} missing from\n{conf}");
        }
        let one = nginx_conf(
            work,
            &pki(),
            4433,
            "http://127.0.0.1:8080",
            Processes::One,
            4096,
        );
        assert!(
            one.starts_with("worker_processes 1;\nmaster_process off;\n"),
            "{one}"
        );
    }

    #[test]
    fn haproxy_under_test() {
        let conf = haproxy_conf(
            Path::new("/w"),
            &pki(),
            4433,
            "http://127.0.0.1:8080",
            20_000,
        );
        for line in [
            "    nbthread 1",
            "    maxconn 19500",
            "    no strict-limits",
            "    bind 127.0.0.1:4433 ssl crt /w/server-bundle.pem ca-file /w/ca.pem verify required alpn h2,http/1.1 ssl-min-ver TLSv1.2",
            "    http-reuse always",
            "    server app 127.0.0.1:8080",
            "    timeout http-keep-alive 900s",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line} missing from\n{conf}"
            );
        }
    }

    #[test]
    fn upstream() {
        let conf = upstream_conf(Path::new("/w"), 8080);
        assert!(balanced(&conf), "{conf}");
        assert!(
            conf.contains("listen 127.0.0.1:8080 backlog=4096;"),
            "{conf}"
        );
        assert!(
            conf.contains("location / { return 200 \"ok\\n\"; }"),
            "{conf}"
        );
    }

    #[test]
    fn shield_tls_only() {
        let conf = shield_conf(Path::new("/w"), &pki(), 4433, "http://127.0.0.1:8080", 9999);
        for line in [
            "cache = \"/w/ranges.json\"",
            "listen = \"127.0.0.1:9999\"",
            "action = \"off\"",
            "server_names = [\"localhost\"]",
            "listen = \"127.0.0.1:4433\"",
            "cert = \"/w/server.pem\"",
            "key = \"/w/server-key.pem\"",
            "client_ca = [\"/w/ca.pem\"]",
            "upstream = \"http://127.0.0.1:8080\"",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line} missing from\n{conf}"
            );
        }
        assert!(!conf.contains("[xdp]"), "{conf}");
    }
}
