//! The TLS edge under test: an echo upstream, shield started in-process,
//! and real `curl` / `openssl` runs against it.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use crate::{pki, require};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use shield::{
    config::Config,
    listen::{Frontend, FrontendOptions},
    proxy::metrics::HttpMetrics,
    tls::{HandshakeResult, TlsMetrics},
};
use tokio::{io::AsyncWriteExt, net::TcpListener, process::Command};

/// An HTTP/1.1 upstream that answers with the request it saw:
/// first line `METHOD PATH`, then one `name: value` line per header.
/// `/slow?ms=N` answers after N milliseconds.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    if request.uri().path() == "/slow" {
                        let ms = request
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("ms="))
                            .and_then(|ms| ms.parse().ok())
                            .unwrap_or(1000);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let mut text = format!("{} {}\n", request.method(), request.uri());
                    for (name, value) in request.headers() {
                        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                    }
                    let response = Response::builder()
                        .header("x-upstream", "echo")
                        .header("connection", "keep-alive")
                        .header("keep-alive", "timeout=5")
                        .body(Full::new(Bytes::from(text)))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Upstream { addr, task }
}

/// An address where nothing listens (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An upstream that accepts and never answers.
pub async fn silent_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    (addr, task)
}

pub struct Shield {
    pub frontend: Frontend,
    pub metrics: TlsMetrics,
    pub http_metrics: HttpMetrics,
    pub registry: Registry,
    pub config: Config,
}

impl Shield {
    pub async fn start(toml: &str) -> Shield {
        Shield::start_with(
            toml,
            FrontendOptions {
                watch_interval: None,
                workers: None,
            },
        )
        .await
    }

    /// With a single connection worker, so every client shares one
    /// upstream pool: what one leaves in it, the next one meets.
    pub async fn one_worker(toml: &str) -> Shield {
        Shield::start_with(
            toml,
            FrontendOptions {
                watch_interval: None,
                workers: std::num::NonZeroUsize::new(1),
            },
        )
        .await
    }

    pub async fn start_with(toml: &str, options: FrontendOptions) -> Shield {
        let config = Config::parse(toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
        let mut registry = Registry::default();
        let metrics = TlsMetrics::register(&mut registry);
        let http_metrics = HttpMetrics::register(&mut registry);
        let frontend =
            Frontend::start_with(&config, metrics.clone(), http_metrics.clone(), options).unwrap();
        Shield {
            frontend,
            metrics,
            http_metrics,
            registry,
            config,
        }
    }

    /// The bound port of the site listener configured at `listen`.
    pub fn port(&self, listen: &str) -> u16 {
        self.frontend
            .local_addr(listen.parse().unwrap())
            .expect("listener")
            .port()
    }

    /// The first site's port.
    pub fn tls_port(&self) -> u16 {
        self.frontend
            .local_addr(self.config.sites[0].listen)
            .unwrap()
            .port()
    }

    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// Waits (briefly) until the handshake counter reaches `at_least`; the
    /// server counts after the client may already have exited.
    pub async fn wait_handshakes(&self, site: &str, result: HandshakeResult, at_least: u64) -> u64 {
        for _ in 0..100 {
            let n = self.metrics.handshakes(site, result);
            if n >= at_least {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.metrics.handshakes(site, result)
    }
}

impl Drop for Shield {
    fn drop(&mut self) {
        self.frontend.shutdown();
    }
}

/// A site block for a test config.
pub fn site_toml(
    names: &[&str],
    listen: &str,
    server: &pki::Leaf,
    client_ca: &[&Path],
    upstream: SocketAddr,
    extra: &str,
) -> String {
    let names = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cas = client_ca
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[site]]\nserver_names = [{names}]\nlisten = \"{listen}\"\ncert = {:?}\nkey = {:?}\nclient_ca = [{cas}]\nupstream = \"http://{upstream}\"\n{extra}\n",
        server.cert.display().to_string(),
        server.key.display().to_string(),
    )
}

pub const HTTP_OFF: &str = "[http]\naction = \"off\"\n";

/// The tests' usual config: port 80 off and one site on an ephemeral
/// loopback port that trusts the zone CA.
pub fn one_site_toml(
    pki: &pki::Pki,
    names: &[&str],
    server: &pki::Leaf,
    upstream: SocketAddr,
    extra: &str,
) -> String {
    format!(
        "{HTTP_OFF}{}",
        site_toml(
            names,
            "127.0.0.1:0",
            server,
            &[&pki.zone_ca.file],
            upstream,
            extra
        )
    )
}

/// The result of one curl run.
#[derive(Debug)]
pub struct Curl {
    pub status: Option<u16>,
    pub body: String,
    pub stderr: String,
    pub exit: i32,
}

impl Curl {
    /// The upstream echo's headers, by lowercase name.
    pub fn echoed(&self) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in self.body.lines().skip(1) {
            if let Some((name, value)) = line.split_once(": ") {
                map.entry(name.to_owned())
                    .or_default()
                    .push(value.to_owned());
            }
        }
        map
    }
}

/// Options of one curl request.
#[derive(Default)]
pub struct Req<'a> {
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub client: Option<&'a pki::Leaf>,
    pub http2: bool,
    pub headers: &'a [&'a str],
    pub extra: &'a [&'a str],
}

pub async fn curl(pki: &pki::Pki, req: Req<'_>) -> Curl {
    require("curl");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&pki.server_ca_file)
        .arg("--resolve")
        .arg(format!("{}:{}:127.0.0.1", req.host, req.port))
        .args(["-w", "\n%{http_code}"]);
    cmd.arg(if req.http2 { "--http2" } else { "--http1.1" });
    if let Some(client) = req.client {
        cmd.arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key);
    }
    for header in req.headers {
        cmd.args(["-H", header]);
    }
    cmd.args(req.extra);
    let path = if req.path.is_empty() { "/" } else { req.path };
    cmd.arg(format!("https://{}:{}{path}", req.host, req.port));
    let out = cmd.output().await.unwrap();
    parse_curl(out)
}

pub fn parse_curl(out: Output) -> Curl {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let status = code.trim().parse::<u16>().ok().filter(|c| *c != 0);
    Curl {
        status,
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        exit: out.status.code().unwrap_or(-1),
    }
}

/// `openssl s_client` with `input` on stdin; returns stdout + stderr.
pub async fn s_client(args: &[&str], input: &[u8]) -> String {
    require("openssl");
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    // Keep stdin open (s_client quits at EOF); -ign_eof callers close it.
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("openssl s_client did not finish")
        .unwrap();
    drop(stdin);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn path_str(path: &Path) -> String {
    path.display().to_string()
}

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A rustls client (for what curl cannot do: hold many connections, pace
/// bytes, offer a chosen session) trusting the test server CA.
pub fn client_config(
    pki: &pki::Pki,
    client: Option<&pki::Leaf>,
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.server_ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(shield::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => {
            let chain = CertificateDer::pem_file_iter(&leaf.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

pub async fn tls_connect(
    config: std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// An HTTP/2 client connection to `sni` on `port` (ALPN h2) with the zone's
/// good client certificate; the connection runs as its own task.
pub async fn h2_client<B>(
    pki: &pki::Pki,
    port: u16,
    sni: &str,
) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = client_config(pki, Some(&pki.good), &[b"h2"]);
    let tls = tls_connect(config, port, sni).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// Reads until EOF or error; returns what was read.
pub async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// This process's resident set size in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
