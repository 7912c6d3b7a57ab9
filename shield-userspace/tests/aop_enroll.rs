//! `shield aop enroll` end to end: the real binary against a local HTTPS
//! fake of Cloudflare's zone-level AOP endpoints (rustls, test CA, loopback
//! only) and a real `shield run` (TLS only, no XDP) whose config it edits
//! and reloads. The fake itself checks, when the upload arrives, that the
//! daemon already accepts the uploaded certificate: the order that never
//! locks Cloudflare out.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::{
    pem::PemObject as _, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use shield_test_support::pki::Pki;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const SHIELD: &str = env!("CARGO_BIN_EXE_shield");
const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const CERT_ID: &str = "2458ce5a0b134c3f8d7e6a1b2c3d4e5f";
const TOKEN: &str = "cf-test-token-Sn3lZJTBX6kkg7OdcBUAxOO963GEIyGQ";
const SITE: &str = "www.enroll.test";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
    /// For an upload: whether shield accepted the uploaded certificate at
    /// the moment the upload arrived.
    origin_accepted: Option<bool>,
}

/// What the fake answers.
#[derive(Debug, Clone)]
enum Reply {
    Json(u16, String),
    /// Never answer (a hung API).
    Stall,
}

#[derive(Debug, Clone)]
struct Script {
    upload: Reply,
    /// Answers to successive status polls; the last one repeats.
    polls: Vec<Reply>,
    enable: Reply,
}

fn envelope(result: &str) -> String {
    format!(r#"{{"success":true,"errors":[],"messages":[],"result":{result}}}"#)
}

fn certificate(status: &str) -> Reply {
    Reply::Json(
        200,
        envelope(&format!(
            r#"{{"id":"{CERT_ID}","status":"{status}","issuer":"test","signature":"ECDSAWithSHA256","expires_on":"2031-01-01T00:00:00Z"}}"#
        )),
    )
}

impl Script {
    fn happy() -> Script {
        Script {
            upload: certificate("pending_deployment"),
            polls: vec![certificate("pending_deployment"), certificate("active")],
            enable: Reply::Json(200, envelope(r#"{"enabled":true}"#)),
        }
    }
}

/// Where the fake checks, on upload, that shield accepts the certificate.
#[derive(Clone)]
struct Origin {
    port: u16,
    server_ca: PathBuf,
}

struct Fake {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn start_fake(pki: &Pki, script: Script, origin: Option<Origin>) -> Fake {
    let leaf = pki.server("api", &["localhost", "127.0.0.1"]);
    let config = rustls::ServerConfig::builder_with_provider(shield::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der)),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let polls = Arc::new(Mutex::new(0usize));
    let seen_task = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen, polls, script, origin) = (
                acceptor.clone(),
                seen_task.clone(),
                polls.clone(),
                script.clone(),
                origin.clone(),
            );
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Keep-alive: several requests may come on one connection.
                loop {
                    let Some(mut request) = read_request(&mut tls).await else {
                        return;
                    };
                    let prefix = format!("/client/v4/zones/{ZONE}/origin_tls_client_auth");
                    let reply = match (request.method.as_str(), request.path.as_str()) {
                        ("POST", path) if path == prefix => {
                            if let Some(origin) = &origin {
                                request.origin_accepted =
                                    Some(origin_accepts(origin, &request.body).await);
                            }
                            script.upload.clone()
                        }
                        ("GET", path) if path == format!("{prefix}/{CERT_ID}") => {
                            let mut n = polls.lock().unwrap();
                            let reply = script.polls[(*n).min(script.polls.len() - 1)].clone();
                            *n += 1;
                            reply
                        }
                        ("PUT", path) if path == format!("{prefix}/settings") => {
                            script.enable.clone()
                        }
                        _ => Reply::Json(
                            404,
                            r#"{"success":false,"errors":[{"code":7003,"message":"No route for that URI"}],"messages":[],"result":null}"#.to_owned(),
                        ),
                    };
                    seen.lock().unwrap().push(request);
                    match reply {
                        Reply::Stall => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        Reply::Json(status, body) => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            if tls.write_all(head.as_bytes()).await.is_err()
                                || tls.write_all(body.as_bytes()).await.is_err()
                                || tls.flush().await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Fake {
        base: format!("https://127.0.0.1:{}/client/v4", addr.port()),
        seen,
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Seen> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let mut length = 0;
    let mut authorization = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "authorization" => authorization = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Seen {
        method,
        path,
        authorization,
        body: String::from_utf8(body).unwrap(),
        origin_accepted: None,
    })
}

/// A TLS 1.3 connection to shield with the uploaded certificate and key
/// (as Cloudflare would make it) that gets an HTTP answer: any status,
/// even 502 from the absent upstream, means the certificate was accepted.
async fn origin_accepts(origin: &Origin, upload: &str) -> bool {
    let upload: serde_json::Value = serde_json::from_str(upload).unwrap();
    let cert = upload["certificate"].as_str().unwrap().as_bytes();
    let key = upload["private_key"].as_str().unwrap().as_bytes();
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key).unwrap();
    answers_http(origin, chain, key).await
}

async fn answers_http(
    origin: &Origin,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&origin.server_ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(shield::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", origin.port)).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SITE).unwrap(), tcp)
            .await?;
        tls.write_all(
            format!("GET / HTTP/1.1\r\nHost: {SITE}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(answer)) => answer.starts_with(b"HTTP/1.1 "),
        _ => false,
    }
}

/// A `shield run` of its own, TLS only, on a loopback port.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(SHIELD)
            .args(["run", "--config"])
            .arg(config)
            .env("SHIELD_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (open_tx, open_rx) = mpsc::channel();
        let lines = log.clone();
        // Drained for the process's life: a full pipe would stall it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if line.contains("TLS listener open") {
                    let _ = open_tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        if open_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!(
                "shield did not open its TLS listener:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        Daemon { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One host: the PKI, a config with the operator's comments, the token
/// file, and the directory enroll writes into.
struct Host {
    pki: Pki,
    dir: tempfile::TempDir,
    config: PathBuf,
    token: PathBuf,
    aop_dir: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn host() -> Host {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.server("site", &[SITE]);
    let port = free_port();
    let config = dir.path().join("shield.toml");
    std::fs::write(
        &config,
        format!(
            r#"# shield on the enroll test host: this comment must survive
[ranges]
refresh = "off"   # no network in tests
cache = {cache:?}

[metrics]
listen = "127.0.0.1:0"

[http]
action = "off"

# the one site
[[site]]
server_names = ["{SITE}"]
listen = "127.0.0.1:{port}"
cert = {cert:?}
key = {key:?}
client_ca = [{old_ca:?}]  # the CA before enrollment
upstream = "http://127.0.0.1:9"
"#,
            cache = dir.path().join("ranges.json").display().to_string(),
            cert = server.cert.display().to_string(),
            key = server.key.display().to_string(),
            old_ca = pki.zone_ca.file.display().to_string(),
        ),
    )
    .unwrap();
    let token = dir.path().join("cf-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let aop_dir = dir.path().join("aop");
    Host {
        pki,
        dir,
        config,
        token,
        aop_dir,
        port,
    }
}

impl Host {
    fn origin(&self) -> Origin {
        Origin {
            port: self.port,
            server_ca: self.pki.server_ca_file.clone(),
        }
    }

    /// Runs `shield aop enroll` against `fake` with `extra` arguments.
    async fn enroll(&self, fake: &Fake, extra: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(SHIELD);
        command
            .args(["aop", "enroll", "--zone", ZONE, "--api-token-file"])
            .arg(&self.token)
            .arg("--config")
            .arg(&self.config)
            .arg("--dir")
            .arg(&self.aop_dir)
            .args(["--api-base", &fake.base, "--api-ca"])
            .arg(&self.pki.server_ca_file)
            .args(["--verify-address", &format!("127.0.0.1:{}", self.port)])
            .args(extra)
            .env("SHIELD_LOG", "debug")
            .stdin(Stdio::null());
        tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("enroll ends")
            .unwrap()
    }
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(TOKEN),
        "the token leaked into {what}:\n{text}"
    );
    assert!(
        !text.contains("PRIVATE KEY"),
        "key material leaked into {what}:\n{text}"
    );
}

fn methods(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_makes_shield_accept_the_ca_before_uploading_then_enables_aop() {
    let host = host();
    let daemon = Daemon::start(&host.config);
    let fake = start_fake(&host.pki, Script::happy(), Some(host.origin())).await;
    let pid = daemon.pid().to_string();
    let output = host.enroll(&fake, &["--pid", &pid]).await;
    let out = text(&output);
    assert!(output.status.success(), "{out}\ndaemon:\n{}", daemon.log());

    // The four steps, in order, and nothing else.
    let prefix = format!("/client/v4/zones/{ZONE}/origin_tls_client_auth");
    let seen = fake.seen();
    assert_eq!(
        methods(&seen),
        vec![
            format!("POST {prefix}"),
            format!("GET {prefix}/{CERT_ID}"),
            format!("GET {prefix}/{CERT_ID}"),
            format!("PUT {prefix}/settings"),
        ],
        "{out}"
    );
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    // The upload carries exactly the files enroll wrote.
    let upload: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    let client_cert = std::fs::read_to_string(host.aop_dir.join("aop-client.pem")).unwrap();
    let client_key = std::fs::read_to_string(host.aop_dir.join("aop-client.key")).unwrap();
    assert_eq!(upload["certificate"].as_str(), Some(client_cert.as_str()));
    assert_eq!(upload["private_key"].as_str(), Some(client_key.as_str()));
    assert!(client_key.contains("PRIVATE KEY"));
    // The CA's key never leaves the host.
    let ca_key = std::fs::read_to_string(host.aop_dir.join("aop-zone-ca.key")).unwrap();
    assert!(!seen.iter().any(|s| s.body.contains(ca_key.trim())));
    let enable: serde_json::Value = serde_json::from_str(&seen[3].body).unwrap();
    assert_eq!(enable, serde_json::json!({"enabled": true}));
    // Shield accepted the certificate before Cloudflare had it.
    assert_eq!(
        seen[0].origin_accepted,
        Some(true),
        "{out}\n{}",
        daemon.log()
    );

    // Keys 0600, certificates readable.
    let mode = |name: &str| {
        std::fs::metadata(host.aop_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("aop-zone-ca.key"), 0o600);
    assert_eq!(mode("aop-client.key"), 0o600);
    assert_eq!(mode("aop-zone-ca.pem"), 0o644);

    // The config gained the CA and kept the operator's comments.
    let config = std::fs::read_to_string(&host.config).unwrap();
    let ca = host.aop_dir.join("aop-zone-ca.pem");
    assert!(
        config.contains(&format!(
            "client_ca = [{:?}, {:?}]  # the CA before enrollment",
            host.pki.zone_ca.file.display().to_string(),
            ca.display().to_string()
        )),
        "{config}"
    );
    for comment in [
        "# shield on the enroll test host: this comment must survive",
        "refresh = \"off\"   # no network in tests",
        "# the one site",
    ] {
        assert!(config.contains(comment), "{config}");
    }

    // The running daemon accepts the new certificate, and still refuses
    // one from a CA it never listed.
    let origin = host.origin();
    let chain = CertificateDer::pem_slice_iter(client_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap();
    assert!(answers_http(&origin, chain, key).await, "{}", daemon.log());
    let attacker = CertificateDer::pem_file_iter(&host.pki.attacker.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let attacker_key = PrivateKeyDer::from_pem_file(&host.pki.attacker.key).unwrap();
    assert!(!answers_http(&origin, attacker, attacker_key).await);
    assert!(daemon.log().contains("SIGHUP"), "{}", daemon.log());

    let stdout = String::from_utf8_lossy(&output.stdout);
    for step in ["1/4", "2/4", "verified", "3/4", CERT_ID, "4/4"] {
        assert!(stdout.contains(step), "{out}");
    }
    assert_no_secret("enroll's output", &out);
    assert_no_secret("the daemon's log", &daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_each_step_and_changes_nothing() {
    let host = host();
    let fake = start_fake(&host.pki, Script::happy(), None).await;
    let before = std::fs::read_to_string(&host.config).unwrap();
    // No daemon: a dry run must not even try to reload one.
    let output = host.enroll(&fake, &["--dry-run", "--pid", "1"]).await;
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
    assert!(!host.aop_dir.exists(), "{out}");
    assert_eq!(std::fs::read_to_string(&host.config).unwrap(), before);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "dry run".to_owned(),
        format!("{}", host.aop_dir.join("aop-zone-ca.pem").display()),
        format!("{}", host.config.display()),
        "SIGHUP to pid 1".to_owned(),
        format!("POST {}/zones/{ZONE}/origin_tls_client_auth", fake.base),
        format!(
            "PUT {}/zones/{ZONE}/origin_tls_client_auth/settings",
            fake.base
        ),
    ] {
        assert!(stdout.contains(&expected), "missing {expected:?}:\n{out}");
    }
    assert_no_secret("the dry run's output", &out);
    // The listing in the temporary directory is unchanged too.
    let names: Vec<_> = std::fs::read_dir(host.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_refusing_the_upload_prints_its_code_and_message() {
    let host = host();
    let daemon = Daemon::start(&host.config);
    let script = Script {
        upload: Reply::Json(
            400,
            r#"{"success":false,"errors":[{"code":1406,"message":"The certificate and private key do not match"}],"messages":[],"result":null}"#.to_owned(),
        ),
        ..Script::happy()
    };
    let fake = start_fake(&host.pki, script, None).await;
    let pid = daemon.pid().to_string();
    let output = host.enroll(&fake, &["--pid", &pid]).await;
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "HTTP 400",
        "code 1406: The certificate and private key do not match",
        "AOP was not enabled",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?}:\n{out}");
    }
    // Each cause once.
    assert_eq!(stderr.matches("code 1406").count(), 1, "{out}");
    assert_eq!(methods(&fake.seen()).len(), 1, "{:?}", fake.seen());
    assert_no_secret("enroll's output", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_never_answers_is_a_timeout_naming_the_step() {
    let host = host();
    let daemon = Daemon::start(&host.config);
    let script = Script {
        upload: Reply::Stall,
        ..Script::happy()
    };
    let fake = start_fake(&host.pki, script, None).await;
    let pid = daemon.pid().to_string();
    let started = std::time::Instant::now();
    let output = host
        .enroll(&fake, &["--pid", &pid, "--api-timeout", "2s"])
        .await;
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30), "{out}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "uploading the client certificate: no answer from the Cloudflare API within 2s",
        "AOP was not enabled",
        "may be uploaded",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?}:\n{out}");
    }
    assert_eq!(methods(&fake.seen()).len(), 1);
    assert_no_secret("enroll's output", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_stays_pending_ends_with_the_zone_state_and_the_undo() {
    let host = host();
    let daemon = Daemon::start(&host.config);
    let script = Script {
        polls: vec![certificate("pending_deployment")],
        ..Script::happy()
    };
    let fake = start_fake(&host.pki, script, None).await;
    let pid = daemon.pid().to_string();
    let output = host
        .enroll(&fake, &["--pid", &pid, "--activation-timeout", "3s"])
        .await;
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        format!("zone {ZONE}: certificate {CERT_ID} is uploaded but its status is `pending_deployment`"),
        "AOP was NOT enabled".to_owned(),
        format!(
            "curl -X DELETE -H \"Authorization: Bearer $(cat {})\" {}/zones/{ZONE}/origin_tls_client_auth/{CERT_ID}",
            host.token.display(),
            fake.base
        ),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?}:\n{out}");
    }
    // Polled more than once, bounded, and never enabled.
    let seen = methods(&fake.seen());
    assert!(
        seen.iter().filter(|m| m.starts_with("GET")).count() >= 2,
        "{seen:?}"
    );
    assert!(!seen.iter().any(|m| m.starts_with("PUT")), "{seen:?}");
    assert_no_secret("enroll's output", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_others_can_read_is_refused_before_anything_happens() {
    let host = host();
    std::fs::set_permissions(&host.token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fake = start_fake(&host.pki, Script::happy(), None).await;
    let before = std::fs::read_to_string(&host.config).unwrap();
    let output = host.enroll(&fake, &["--pid", "1"]).await;
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("chmod 600 {}", host.token.display())),
        "{out}"
    );
    assert!(fake.seen().is_empty());
    assert!(!host.aop_dir.exists());
    assert_eq!(std::fs::read_to_string(&host.config).unwrap(), before);
    assert_no_secret("enroll's output", &out);
}
