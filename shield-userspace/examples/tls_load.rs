//! Load client for `cargo xtask bench tls` (not a test, not shipped).
//!
//! `handshakes`: each connection is a full TLS 1.3 handshake with a client
//! certificate, one `Connection: close` request, and nothing reused (no
//! session resumption, no keep-alive), for a fixed time; prints the rate.
//! `hold`: opens N mTLS connections, sends one keep-alive request on each
//! (HTTP/1.1, or with `--http2` one h2 stream, ALPN h2), then keeps them
//! all open and idle until stdin closes.
//!
//! The client does as little crypto as it can so that, on a shared 2-core
//! host, the server's cost dominates: it offers only X25519 (both servers
//! then do the same key exchange; rustls' default would add ML-KEM, which
//! nginx 1.22 lacks) and it does not verify the server's certificate. The
//! server's side of the handshake is complete: it signs, and it verifies
//! the client's chain and signature.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::Read as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    crypto::{aws_lc_rs, CryptoProvider},
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Semaphore,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

#[derive(Parser)]
struct Cli {
    /// Server address, e.g. 127.0.0.1:8443.
    #[arg(long)]
    addr: String,
    /// SNI and Host header.
    #[arg(long)]
    name: String,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Full handshakes (one request each) for `--seconds`; prints the rate.
    Handshakes {
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Open `--count` connections and hold them idle until stdin closes.
    Hold {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Offer only h2 and send the request on a stream.
        #[arg(long)]
        http2: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    match cli.mode {
        Mode::Handshakes {
            concurrency,
            seconds,
        } => {
            let client = Arc::new(Client::new(&cli, false)?);
            handshakes(client, concurrency, Duration::from_secs_f64(seconds)).await
        }
        Mode::Hold {
            count,
            concurrency,
            http2,
        } => {
            let client = Arc::new(Client::new(&cli, http2)?);
            hold(client, count, concurrency, http2).await
        }
    }
}

struct Client {
    addr: String,
    name: ServerName<'static>,
    connector: TlsConnector,
    close_request: Vec<u8>,
    keepalive_request: Vec<u8>,
}

impl Client {
    fn new(cli: &Cli, http2: bool) -> anyhow::Result<Client> {
        let certs = CertificateDer::pem_file_iter(&cli.cert)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read {}", cli.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&cli.key)
            .with_context(|| format!("cannot read {}", cli.key.display()))?;
        let mut provider = aws_lc_rs::default_provider();
        provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        let provider = Arc::new(provider);
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 unavailable")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_client_auth_cert(certs, key)
            .context("client certificate and key do not match")?;
        // Every connection pays a full handshake.
        config.resumption = Resumption::disabled();
        if http2 {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        let name = ServerName::try_from(cli.name.clone()).context("bad --name")?;
        Ok(Client {
            addr: cli.addr.clone(),
            name,
            connector: TlsConnector::from(Arc::new(config)),
            close_request: format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                cli.name
            )
            .into_bytes(),
            keepalive_request: format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", cli.name).into_bytes(),
        })
    }

    async fn connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(self.connector.connect(self.name.clone(), tcp).await?)
    }

    /// Handshake, one request, read to the end.
    async fn one_shot(&self) -> anyhow::Result<()> {
        let mut tls = self.connect().await?;
        tls.write_all(&self.close_request).await?;
        let mut response = Vec::with_capacity(512);
        // A peer closing without close_notify is still a complete exchange
        // if the response arrived.
        let _ = tls.read_to_end(&mut response).await;
        check_status(&response)
    }

    /// Handshake and one keep-alive request; the connection stays open.
    async fn opened(&self) -> anyhow::Result<Held> {
        let mut tls = self.connect().await?;
        tls.write_all(&self.keepalive_request).await?;
        read_response(&mut tls).await?;
        Ok(Held::Http1(Box::new(tls)))
    }

    /// Handshake (ALPN h2) and one request on a stream, its body read to
    /// the end; the connection stays open, its task answering the
    /// server's pings.
    async fn opened_h2(&self) -> anyhow::Result<Held> {
        let tls = self.connect().await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("the server did not choose h2");
        }
        let (mut send, connection) = h2::client::handshake(tls).await?;
        let task = tokio::spawn(connection);
        let request = http::Request::get(format!("https://{}/", self.name.to_str()))
            .body(())
            .context("bad request")?;
        let (response, _) = send.send_request(request, true)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            bail!("unexpected status {}", response.status());
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok(Held::Http2(send, task))
    }
}

/// A connection held open.
enum Held {
    Http1(Box<TlsStream<TcpStream>>),
    /// The request handle keeps the connection from closing; the task
    /// drives it.
    Http2(
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ),
}

fn check_status(response: &[u8]) -> anyhow::Result<()> {
    if response.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&response[..response.len().min(40)]).into_owned();
        bail!("unexpected response {head:?}")
    }
}

/// Reads one response with a Content-Length body (what both proxies send
/// for the upstream's fixed body).
async fn read_response(tls: &mut TlsStream<TcpStream>) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        check_status(&buf)?;
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("response without Content-Length")?;
        while buf.len() < end + 4 + length {
            let n = tls.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok(());
    }
}

async fn handshakes(
    client: Arc<Client>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, ok, errors) = (client.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut first_error = None;
            while Instant::now() < deadline {
                match client.one_shot().await {
                    Ok(()) if Instant::now() <= deadline => {
                        ok.fetch_add(1, Relaxed);
                    }
                    Ok(()) => {}
                    Err(error) => {
                        errors.fetch_add(1, Relaxed);
                        first_error.get_or_insert(error);
                    }
                }
            }
            first_error
        }));
    }
    let mut first_error = None;
    for task in tasks {
        if let Ok(Some(error)) = task.await {
            first_error.get_or_insert(error);
        }
    }
    let (ok, errors) = (ok.load(Relaxed), errors.load(Relaxed));
    let rate = ok as f64 / duration.as_secs_f64();
    println!("handshakes_ok={ok} errors={errors} per_second={rate:.1}");
    if let Some(error) = first_error {
        eprintln!("first error: {error:#}");
    }
    Ok(())
}

async fn hold(
    client: Arc<Client>,
    count: usize,
    concurrency: usize,
    http2: bool,
) -> anyhow::Result<()> {
    raise_nofile(count as u64 + 1024);
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (client, gate) = (client.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            if http2 {
                client.opened_h2().await
            } else {
                client.opened().await
            }
        }));
    }
    let mut held = Vec::with_capacity(count);
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(connection)) => held.push(connection),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(error.into());
            }
        }
    }
    if let Some(error) = &first_error {
        eprintln!("first error: {error:#}");
    }
    println!("held={} errors={}", held.len(), count - held.len());
    // The caller reads RSS now, then closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    for connection in held {
        match connection {
            Held::Http1(tls) => drop(tls),
            Held::Http2(send, task) => {
                drop(send);
                task.abort();
            }
        }
    }
    Ok(())
}

/// 10,000 sockets need more than the usual 1,024 descriptors.
fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Accepts any server certificate: the bench measures the server's cost,
/// and the server's chain is ours.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
