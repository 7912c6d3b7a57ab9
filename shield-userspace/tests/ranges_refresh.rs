//! The range refresh against a local HTTPS fake of Cloudflare's API (rustls,
//! test CA, loopback only), driven through every good and bad case. Each bad
//! case must be refused with its own `result` label while the last known
//! good set stays in force, in memory and in the cache. The fake knows
//! `?networks=jdcloud` (the China Network): asked for it, it adds
//! `jdcloud_cidrs` to a JSON answer, or leaves the field out on request.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shield::{
    config::RangesConfig,
    ranges::{
        cache,
        metrics::{RangeMetrics, RefreshResult},
        refresh::Refresher,
        source::{FetchOptions, Fetcher},
        validate::Limits,
        RangeSet,
    },
};
use shield_test_support::pki::Pki;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const API_JSON: &str = include_str!("../data/cloudflare-ips-api.json");
const TIMEOUT: Duration = Duration::from_millis(1500);

/// What the fake answers next.
#[derive(Clone)]
enum Reply {
    Full {
        status: u16,
        body: Vec<u8>,
    },
    /// Sends `sent` bytes of a `total`-byte body, then stalls.
    Stall {
        total: usize,
        sent: Vec<u8>,
    },
    /// A chunked body of `total` bytes (no Content-Length to refuse early).
    Chunked {
        total: usize,
    },
}

struct Fake {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    /// `jdcloud_cidrs` for a request with `networks=jdcloud`; `None`
    /// leaves the field out, as an API that ignored the query would.
    jdcloud: Arc<Mutex<Option<Vec<String>>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// China Network prefixes for the fake (public space, never routed to:
/// they only travel as text in the API answer).
const JDCLOUD: &[&str] = &["116.196.0.0/17", "2402:db40:5100::/40"];

/// Whether the request head asks for the China Network.
fn asks_for_jdcloud(head: &str) -> bool {
    let target = head.split_whitespace().nth(1).unwrap_or("");
    target
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair == "networks=jdcloud"))
}

/// The reply with `jdcloud_cidrs` put into a JSON 200 body, as the API
/// answers `?networks=jdcloud`; other replies are served as they are.
fn with_jdcloud(reply: Reply, jdcloud: Option<&[String]>) -> Reply {
    let Reply::Full { status: 200, body } = &reply else {
        return reply;
    };
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return reply;
    };
    let Some(result) = json.get_mut("result").and_then(|r| r.as_object_mut()) else {
        return reply;
    };
    match jdcloud {
        Some(list) => {
            result.insert("jdcloud_cidrs".into(), serde_json::json!(list));
        }
        None => {
            result.remove("jdcloud_cidrs");
        }
    }
    Reply::Full {
        status: 200,
        body: json.to_string().into_bytes(),
    }
}

/// The fake's TLS: a certificate for localhost and 127.0.0.1 from `pki`'s
/// server CA.
fn server_config(pki: &Pki) -> rustls::ServerConfig {
    let leaf = pki.server("api", &["localhost", "127.0.0.1"]);
    rustls::ServerConfig::builder_with_provider(shield::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der)),
        )
        .unwrap()
}

async fn start_fake(config: rustls::ServerConfig) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let reply = Arc::new(Mutex::new(Reply::Full {
        status: 200,
        body: API_JSON.as_bytes().to_vec(),
    }));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let jdcloud = Arc::new(Mutex::new(Some(
        JDCLOUD.iter().map(ToString::to_string).collect::<Vec<_>>(),
    )));
    let (reply_task, requests_task, jdcloud_task) =
        (reply.clone(), requests.clone(), jdcloud.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let reply = reply_task.lock().unwrap().clone();
            let jdcloud = jdcloud_task.lock().unwrap().clone();
            let requests = requests_task.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let reply = if asks_for_jdcloud(&head) {
                    with_jdcloud(reply, jdcloud.as_deref())
                } else {
                    reply
                };
                requests.lock().unwrap().push(head);
                let _ = serve(&mut tls, reply).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Fake {
        addr,
        reply,
        jdcloud,
        requests,
    }
}

async fn serve(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    reply: Reply,
) -> std::io::Result<()> {
    match reply {
        Reply::Full { status, body } => {
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            tls.write_all(head.as_bytes()).await?;
            tls.write_all(&body).await?;
        }
        Reply::Stall { total, sent } => {
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n");
            tls.write_all(head.as_bytes()).await?;
            tls.write_all(&sent).await?;
            tls.flush().await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Reply::Chunked { total } => {
            tls.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            )
            .await?;
            let chunk = vec![b' '; 64 * 1024];
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len());
                tls.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                tls.write_all(&chunk[..n]).await?;
                tls.write_all(b"\r\n").await?;
                left -= n;
            }
            tls.write_all(b"0\r\n\r\n").await?;
        }
    }
    tls.flush().await
}

fn api(v4: &[&str], v6: &[&str], etag: &str) -> Vec<u8> {
    serde_json::json!({
        "result": {"ipv4_cidrs": v4, "ipv6_cidrs": v6, "etag": etag},
        "success": true, "errors": [], "messages": []
    })
    .to_string()
    .into_bytes()
}

fn snapshot_lists() -> (Vec<String>, Vec<String>) {
    let s = RangeSet::snapshot();
    (
        s.ipv4.iter().map(ToString::to_string).collect(),
        s.ipv6.iter().map(ToString::to_string).collect(),
    )
}

fn refresher(fake_url: &str, trusted: &Pki, cache: &std::path::Path) -> Refresher {
    refresher_with(ranges_config(fake_url, cache, false), trusted)
}

fn ranges_config(fake_url: &str, cache: &std::path::Path, china_network: bool) -> RangesConfig {
    RangesConfig {
        sources: vec![fake_url.parse().expect("an https URL")],
        cache: cache.to_owned(),
        china_network,
        ..RangesConfig::default()
    }
}

fn refresher_with(config: RangesConfig, trusted: &Pki) -> Refresher {
    let cache = &config.cache;
    let fetcher = Fetcher::new(FetchOptions {
        connect_timeout: TIMEOUT,
        timeout: TIMEOUT,
        roots: Some(vec![CertificateDer::from(trusted.server_ca_der().to_vec())]),
        ..FetchOptions::default()
    })
    .unwrap();
    let (current, fetched_at) = cache::load_or_snapshot(cache, &Limits::default());
    Refresher::new(
        &config,
        fetcher,
        RangeMetrics::default(),
        current,
        fetched_at,
    )
}

#[tokio::test]
async fn every_case_is_refused_with_its_own_label_and_keeps_the_last_good_set() {
    let pki = Pki::new();
    let fake = start_fake(server_config(&pki)).await;
    let url = format!("https://localhost:{}/client/v4/ips", fake.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("ranges.json");
    let mut refresher = refresher(&url, &pki, &cache_path);
    let applied = Arc::new(Mutex::new(Vec::<RangeSet>::new()));
    let apply = |applied: &Arc<Mutex<Vec<RangeSet>>>| {
        let applied = applied.clone();
        move |set: &RangeSet| -> Result<(), String> {
            applied.lock().unwrap().push(set.clone());
            Ok(())
        }
    };
    let set_reply = |reply: Reply| *fake.reply.lock().unwrap() = reply;
    let (v4, v6) = snapshot_lists();
    let v4: Vec<&str> = v4.iter().map(String::as_str).collect();
    let v6: Vec<&str> = v6.iter().map(String::as_str).collect();

    // Good data with the snapshot's etag: confirmed, nothing applied.
    let report = refresher.refresh(false, apply(&applied)).await;
    assert_eq!(report.result, RefreshResult::Unchanged, "{report:?}");
    assert!(applied.lock().unwrap().is_empty());
    assert!(refresher.metrics().last_success() > 0.0);
    let cached = cache::read(&cache_path, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(cached.ranges.source.to_string(), url);
    let head = fake.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.contains(&format!("user-agent: shield/{}", env!("CARGO_PKG_VERSION"))),
        "{head}"
    );

    // Changed data with a new etag: applied and cached.
    let mut grown = v4.clone();
    grown.push("198.51.99.0/24");
    set_reply(Reply::Full {
        status: 200,
        body: api(&grown, &v6, "etag-2"),
    });
    let report = refresher.refresh(false, apply(&applied)).await;
    assert_eq!(report.result, RefreshResult::Updated, "{report:?}");
    let diff = report.diff.unwrap();
    assert_eq!(diff.added, vec!["198.51.99.0/24".parse().unwrap()]);
    assert!(diff.removed.is_empty());
    assert_eq!(applied.lock().unwrap().len(), 1);
    let good = refresher.current().clone();
    assert_eq!(good.etag.as_deref(), Some("etag-2"));
    let cache_text = std::fs::read_to_string(&cache_path).unwrap();
    assert!(cache_text.contains("etag-2") && cache_text.contains("fetched_at"));

    // Unchanged etag: no apply.
    let report = refresher.refresh(false, apply(&applied)).await;
    assert_eq!(report.result, RefreshResult::Unchanged);
    assert_eq!(applied.lock().unwrap().len(), 1);

    let shrunk: Vec<&str> = grown[..2].to_vec(); // two /22s of ~1.5M addresses
    let with_private = [&grown[..], &["10.0.0.0/8"]].concat();
    let with_host_bits = [&grown[..], &["198.51.98.7/24"]].concat();
    let bad: Vec<(&str, Reply, RefreshResult)> = vec![
        (
            "HTTP 500",
            Reply::Full {
                status: 500,
                body: b"oops".to_vec(),
            },
            RefreshResult::HttpStatus,
        ),
        (
            "slow body",
            Reply::Stall {
                total: API_JSON.len(),
                sent: API_JSON.as_bytes()[..20].to_vec(),
            },
            RefreshResult::Timeout,
        ),
        (
            "truncated JSON",
            Reply::Full {
                status: 200,
                body: API_JSON.as_bytes()[..API_JSON.len() / 2].to_vec(),
            },
            RefreshResult::BadJson,
        ),
        (
            "success false",
            Reply::Full {
                status: 200,
                body: API_JSON
                    .replace("\"success\": true", "\"success\": false")
                    .into_bytes(),
            },
            RefreshResult::NotSuccessful,
        ),
        (
            "empty IPv4",
            Reply::Full {
                status: 200,
                body: api(&[], &v6, "e4"),
            },
            RefreshResult::EmptyIpv4,
        ),
        (
            "empty IPv6",
            Reply::Full {
                status: 200,
                body: api(&grown, &[], "e6"),
            },
            RefreshResult::EmptyIpv6,
        ),
        (
            "0.0.0.0/0",
            Reply::Full {
                status: 200,
                body: api(&["0.0.0.0/0"], &v6, "all"),
            },
            RefreshResult::PrefixTooShort,
        ),
        (
            "private range",
            Reply::Full {
                status: 200,
                body: api(&with_private, &v6, "priv"),
            },
            RefreshResult::ReservedRange,
        ),
        (
            "host bits",
            Reply::Full {
                status: 200,
                body: api(&with_host_bits, &v6, "host"),
            },
            RefreshResult::HostBits,
        ),
        (
            "90% shrink",
            Reply::Full {
                status: 200,
                body: api(&shrunk, &v6, "shrink"),
            },
            RefreshResult::Shrink,
        ),
        (
            "not UTF-8",
            Reply::Full {
                status: 200,
                body: b"173.245.48.0/20\n\xff\xfe".to_vec(),
            },
            RefreshResult::NotUtf8,
        ),
        (
            "10 MiB body",
            Reply::Chunked { total: 10 << 20 },
            RefreshResult::TooLarge,
        ),
    ];
    for (name, reply, want) in bad {
        set_reply(reply);
        let before = refresher.metrics().refreshes(want);
        let started = std::time::Instant::now();
        let report = refresher.refresh(false, apply(&applied)).await;
        assert_eq!(report.result, want, "{name}: {report:?}");
        assert!(report.error.is_some(), "{name}: says why");
        assert_eq!(refresher.metrics().refreshes(want), before + 1, "{name}");
        assert_eq!(refresher.current(), &good, "{name}: last good kept");
        assert_eq!(applied.lock().unwrap().len(), 1, "{name}: nothing applied");
        let cached = cache::read(&cache_path, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(cached.ranges, good, "{name}: cache kept");
        assert!(started.elapsed() < TIMEOUT * 3, "{name}: bounded in time");
    }
    // The 90% shrink goes through when the operator accepts it.
    set_reply(Reply::Full {
        status: 200,
        body: api(&shrunk, &v6, "shrink"),
    });
    let report = refresher.refresh(true, apply(&applied)).await;
    assert_eq!(report.result, RefreshResult::Updated);
    assert_eq!(report.diff.unwrap().removed.len(), grown.len() - 2);
    assert_eq!(refresher.current().ipv4.len(), 2);
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let trusted = Pki::new();
    let impostor = Pki::new();
    let fake = start_fake(server_config(&impostor)).await;
    let url = format!("https://127.0.0.1:{}/client/v4/ips", fake.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let mut refresher = refresher(&url, &trusted, &dir.path().join("ranges.json"));
    let report = refresher
        .refresh(false, |_: &RangeSet| -> Result<(), String> {
            panic!("nothing may be applied")
        })
        .await;
    assert_eq!(report.result, RefreshResult::Tls, "{report:?}");
    assert_eq!(refresher.metrics().refreshes(RefreshResult::Tls), 1);
    assert_eq!(refresher.current(), &RangeSet::snapshot());
    assert!(fake.requests.lock().unwrap().is_empty(), "no request sent");
}

#[tokio::test]
async fn unreachable_network_starts_from_the_cache_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("ranges.json");
    let mut cached_set = RangeSet::snapshot();
    cached_set.ipv4.push("198.51.99.0/24".parse().unwrap());
    cached_set.etag = Some("cached".into());
    let at = std::time::SystemTime::now() - Duration::from_secs(3600);
    cache::write(
        &cache_path,
        &cache::Cached {
            ranges: cached_set.clone(),
            fetched_at: at,
        },
    )
    .unwrap();
    // A port nothing listens on: the refresh fails, the cache is in force.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let pki = Pki::new();
    let started = std::time::Instant::now();
    let mut refresher = refresher(&format!("https://127.0.0.1:{port}/ips"), &pki, &cache_path);
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(refresher.current().etag.as_deref(), Some("cached"));
    assert!(refresher.current().same_prefixes(&cached_set));
    let report = refresher
        .refresh(false, |_: &RangeSet| -> Result<(), String> {
            panic!("nothing may be applied")
        })
        .await;
    assert_eq!(report.result, RefreshResult::Network, "{report:?}");
    assert_eq!(refresher.current().etag.as_deref(), Some("cached"));
}

fn request_target(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

fn api_with_jdcloud(v4: &[&str], v6: &[&str], jdcloud: &[&str], etag: &str) -> Vec<u8> {
    serde_json::json!({
        "result": {"ipv4_cidrs": v4, "ipv6_cidrs": v6, "jdcloud_cidrs": jdcloud, "etag": etag},
        "success": true, "errors": [], "messages": []
    })
    .to_string()
    .into_bytes()
}

fn recorder(applied: &Arc<Mutex<Vec<RangeSet>>>) -> impl FnOnce(&RangeSet) -> Result<(), String> {
    let applied = applied.clone();
    move |set: &RangeSet| {
        applied.lock().unwrap().push(set.clone());
        Ok(())
    }
}

#[tokio::test]
async fn the_china_network_is_asked_for_only_when_on_and_lands_in_the_set_and_cache() {
    let pki = Pki::new();
    let fake = start_fake(server_config(&pki)).await;
    let url = format!("https://localhost:{}/client/v4/ips", fake.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("ranges.json");
    let applied = Arc::new(Mutex::new(Vec::<RangeSet>::new()));
    let (v4, v6) = snapshot_lists();
    let v4: Vec<&str> = v4.iter().map(String::as_str).collect();
    let v6: Vec<&str> = v6.iter().map(String::as_str).collect();
    let jd_v4: std::net::IpAddr = "116.196.1.1".parse().unwrap();
    let jd_v6: std::net::IpAddr = "2402:db40:5100::1".parse().unwrap();

    // Off: no query, and a jdcloud_cidrs the source sends anyway is ignored.
    let mut config = ranges_config(&url, &cache_path, false);
    let mut refresher = refresher_with(config.clone(), &pki);
    assert!(!refresher.networks_pending());
    *fake.reply.lock().unwrap() = Reply::Full {
        status: 200,
        body: api_with_jdcloud(&v4, &v6, JDCLOUD, "with-jd"),
    };
    let report = refresher.refresh(false, recorder(&applied)).await;
    assert_eq!(report.result, RefreshResult::Updated, "{report:?}");
    let head = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(request_target(&head), "/client/v4/ips", "{head}");
    assert_eq!(refresher.current().jdcloud, None);
    assert!(!refresher.current().contains(jd_v4));
    assert!(!std::fs::read_to_string(&cache_path)
        .unwrap()
        .contains("jdcloud"));
    *fake.reply.lock().unwrap() = Reply::Full {
        status: 200,
        body: API_JSON.as_bytes().to_vec(),
    };

    // On (a SIGHUP reconfigure): a refresh is due, the query is sent, and
    // JD Cloud's prefixes are in force, in the allowlist and in the cache.
    config.china_network = true;
    assert!(refresher.reconfigure(&config), "the networks changed");
    assert!(
        refresher.networks_pending(),
        "fetched without the China Network"
    );
    let report = refresher.refresh(false, recorder(&applied)).await;
    assert_eq!(report.result, RefreshResult::Updated, "{report:?}");
    let head = fake.requests.lock().unwrap()[1].clone();
    assert_eq!(
        request_target(&head),
        "/client/v4/ips?networks=jdcloud",
        "{head}"
    );
    let diff = report.diff.unwrap();
    let jdcloud: Vec<ipnetwork::IpNetwork> = JDCLOUD.iter().map(|p| p.parse().unwrap()).collect();
    assert_eq!(diff.added, jdcloud);
    assert!(diff.removed.is_empty());
    assert!(!refresher.networks_pending());
    assert!(refresher.current().contains(jd_v4) && refresher.current().contains(jd_v6));
    let last_applied = applied.lock().unwrap().last().cloned().unwrap();
    let allowlist = shield::ranges::tagged_allowlist(&last_applied, &[]);
    for prefix in &jdcloud {
        assert!(
            allowlist.contains(&(*prefix, shield_common::PREFIX_FROM_JDCLOUD)),
            "{prefix} in {allowlist:?}"
        );
    }
    assert_eq!(allowlist.len(), v4.len() + v6.len() + jdcloud.len());
    let cached = cache::read(&cache_path, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(cached.ranges.jdcloud.as_deref(), Some(&jdcloud[..]));
    // A restart with the cache enforces them before any request.
    let restarted = refresher_with(config.clone(), &pki);
    assert!(restarted.current().contains(jd_v4));
    assert!(!restarted.networks_pending());

    // Confirmed on the next refresh; nothing new applied.
    let before = applied.lock().unwrap().len();
    let report = refresher.refresh(false, recorder(&applied)).await;
    assert_eq!(report.result, RefreshResult::Unchanged, "{report:?}");
    assert_eq!(applied.lock().unwrap().len(), before);

    // Off again: JD Cloud's prefixes leave the set at once, and the next
    // refresh asks without the query and caches without the list.
    config.china_network = false;
    assert!(refresher.reconfigure(&config));
    assert!(!refresher.current().contains(jd_v4));
    let report = refresher.refresh(false, recorder(&applied)).await;
    assert!(report.result.is_success(), "{report:?}");
    let head = fake.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(request_target(&head), "/client/v4/ips", "{head}");
    let cached = cache::read(&cache_path, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(cached.ranges.jdcloud, None);
}

#[tokio::test]
async fn a_feed_without_jdcloud_is_refused_with_its_own_result_and_keeps_the_last_good_set() {
    let pki = Pki::new();
    let fake = start_fake(server_config(&pki)).await;
    let url = format!("https://localhost:{}/client/v4/ips", fake.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("ranges.json");
    let applied = Arc::new(Mutex::new(Vec::<RangeSet>::new()));
    let mut refresher = refresher_with(ranges_config(&url, &cache_path, true), &pki);

    // First start, no cache: the snapshot has no China Network. An answer
    // without the field is refused even though it matches the snapshot.
    assert!(refresher.networks_pending());
    *fake.jdcloud.lock().unwrap() = None;
    let report = refresher.refresh(false, recorder(&applied)).await;
    assert_eq!(report.result, RefreshResult::JdcloudMissing, "{report:?}");
    assert_eq!(report.result.as_str(), "jdcloud_missing");
    assert!(
        report.error.as_deref().unwrap().contains("jdcloud_cidrs"),
        "{report:?}"
    );
    assert_eq!(refresher.current(), &RangeSet::snapshot());
    assert!(refresher.networks_pending());
    assert!(applied.lock().unwrap().is_empty());
    assert!(!cache_path.exists(), "nothing cached");

    // The API answers with the list: in force.
    *fake.jdcloud.lock().unwrap() = Some(JDCLOUD.iter().map(ToString::to_string).collect());
    let report = refresher.refresh(false, recorder(&applied)).await;
    assert_eq!(report.result, RefreshResult::Updated, "{report:?}");
    let good = refresher.current().clone();
    assert!(good.jdcloud.is_some());

    let (v4, v6) = snapshot_lists();
    let v4: Vec<&str> = v4.iter().map(String::as_str).collect();
    let v6: Vec<&str> = v6.iter().map(String::as_str).collect();
    let bad: Vec<(&str, Option<Vec<String>>, Reply, RefreshResult)> = vec![
        (
            "field missing",
            None,
            Reply::Full {
                status: 200,
                body: api(&v4, &v6, "no-jd"),
            },
            RefreshResult::JdcloudMissing,
        ),
        (
            "field empty",
            Some(Vec::new()),
            Reply::Full {
                status: 200,
                body: api(&v4, &v6, "empty-jd"),
            },
            RefreshResult::EmptyJdcloud,
        ),
        (
            "private JD Cloud entry",
            Some(vec!["116.196.0.0/17".into(), "10.0.0.0/8".into()]),
            Reply::Full {
                status: 200,
                body: api(&v4, &v6, "priv-jd"),
            },
            RefreshResult::ReservedRange,
        ),
        (
            "JD Cloud entry too short",
            Some(vec!["116.0.0.0/7".into(), JDCLOUD[1].into()]),
            Reply::Full {
                status: 200,
                body: api(&v4, &v6, "short-jd"),
            },
            RefreshResult::PrefixTooShort,
        ),
        (
            "JD Cloud IPv4 gone",
            Some(vec![JDCLOUD[1].into()]),
            Reply::Full {
                status: 200,
                body: api(&v4, &v6, "shrink-jd"),
            },
            RefreshResult::Shrink,
        ),
    ];
    for (name, jdcloud, reply, want) in bad {
        *fake.jdcloud.lock().unwrap() = jdcloud;
        *fake.reply.lock().unwrap() = reply;
        let before = refresher.metrics().refreshes(want);
        let applied_before = applied.lock().unwrap().len();
        let report = refresher.refresh(false, recorder(&applied)).await;
        assert_eq!(report.result, want, "{name}: {report:?}");
        assert!(report.error.is_some(), "{name}: says why");
        assert_eq!(refresher.metrics().refreshes(want), before + 1, "{name}");
        assert_eq!(refresher.current(), &good, "{name}: last good kept");
        assert_eq!(applied.lock().unwrap().len(), applied_before, "{name}");
        let cached = cache::read(&cache_path, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(cached.ranges, good, "{name}: cache kept");
    }
    assert_eq!(
        refresher.metrics().refreshes(RefreshResult::JdcloudMissing),
        2,
        "its own result, counted each time"
    );
}
