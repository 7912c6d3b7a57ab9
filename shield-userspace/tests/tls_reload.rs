//! Reload (explicit and on file change) and session isolation between
//! sites.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shield::{config::Config, listen::FrontendOptions, tls::HandshakeResult};
use shield_test_support::{
    pki::Pki,
    tls::{curl, one_site_toml, s_client, site_toml, upstream, Req, Shield, HTTP_OFF},
};

const SITE: &str = "www.a.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_in_flight_requests_and_applies_new_cas() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let before = one_site_toml(&pki, &[SITE], &server, up.addr, "");
    let shield = Shield::start(&before).await;
    let port = shield.tls_port();

    let long = {
        let pki_good = pki.good.clone();
        let ca = pki.server_ca_file.clone();
        tokio::spawn(async move {
            shield_test_support::tls::parse_curl(
                tokio::process::Command::new("curl")
                    .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
                    .arg(&ca)
                    .arg("--cert")
                    .arg(&pki_good.cert)
                    .arg("--key")
                    .arg(&pki_good.key)
                    .arg("--resolve")
                    .arg(format!("{SITE}:{port}:127.0.0.1"))
                    .arg(format!("https://{SITE}:{port}/slow?ms=2500"))
                    .output()
                    .await
                    .unwrap(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Rotate: only the rotation CA from now on.
    let after = format!(
        "{HTTP_OFF}{}",
        site_toml(
            &[SITE],
            "127.0.0.1:0",
            &server,
            &[&pki.rotation_ca.file],
            up.addr,
            ""
        )
    );
    shield
        .frontend
        .reload(&Config::parse(&after).unwrap())
        .unwrap();
    assert_eq!(shield.tls_port(), port, "the listener was kept");

    let out = curl(
        &pki,
        Req {
            host: SITE,
            port,
            client: Some(&pki.rotated),
            ..Req::default()
        },
    )
    .await;
    assert_eq!(out.status, Some(200), "{out:?}");
    let refused = curl(
        &pki,
        Req {
            host: SITE,
            port,
            client: Some(&pki.good),
            ..Req::default()
        },
    )
    .await;
    assert_eq!(refused.status, None, "{refused:?}");
    assert_eq!(
        shield
            .wait_handshakes(SITE, HandshakeResult::UnknownCa, 1)
            .await,
        1
    );

    let long = long.await.unwrap();
    assert_eq!(
        long.status,
        Some(200),
        "in-flight request broken by reload: {long:?}"
    );
    assert!(long.body.starts_with("GET /slow"), "{long:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_keeps_the_old_state() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let ca_copy = pki.path().join("client-ca-live.pem");
    std::fs::copy(&pki.zone_ca.file, &ca_copy).unwrap();
    let toml = format!(
        "{HTTP_OFF}{}",
        site_toml(&[SITE], "127.0.0.1:0", &server, &[&ca_copy], up.addr, "")
    );
    let shield = Shield::start(&toml).await;
    let port = shield.tls_port();

    std::fs::write(&ca_copy, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let error = shield
        .frontend
        .reload(&Config::parse(&toml).unwrap())
        .unwrap_err();
    // The file is named in the cause chain, under the site.
    let error = shield::error::Chain(&error).to_string();
    assert!(error.contains("client-ca-live.pem"), "{error}");

    let missing = toml.replace(&server.key.display().to_string(), "/nonexistent/key.pem");
    let error = shield
        .frontend
        .reload(&Config::parse(&missing).unwrap())
        .unwrap_err();
    let error = shield::error::Chain(&error).to_string();
    assert!(error.contains("/nonexistent/key.pem"), "{error}");

    let out = curl(
        &pki,
        Req {
            host: SITE,
            port,
            client: Some(&pki.good),
            ..Req::default()
        },
    )
    .await;
    assert_eq!(out.status, Some(200), "old state not kept: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_picked_up_by_the_watcher() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let ca_live = pki.path().join("client-ca-live.pem");
    std::fs::copy(&pki.zone_ca.file, &ca_live).unwrap();
    let toml = format!(
        "{HTTP_OFF}{}",
        site_toml(&[SITE], "127.0.0.1:0", &server, &[&ca_live], up.addr, "")
    );
    let shield = Shield::start_with(
        &toml,
        FrontendOptions {
            watch_interval: Some(Duration::from_millis(200)),
            workers: None,
        },
    )
    .await;
    let port = shield.tls_port();
    let ok = |client| Req {
        host: SITE,
        port,
        client: Some(client),
        ..Req::default()
    };
    assert_eq!(curl(&pki, ok(&pki.good)).await.status, Some(200));

    // A broken write is refused and the old CA keeps working...
    std::fs::write(&ca_live, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(curl(&pki, ok(&pki.good)).await.status, Some(200));

    // ...and the next good write (by rename, as deploy tools do) applies.
    let staged = pki.path().join("client-ca-staged.pem");
    std::fs::copy(&pki.rotation_ca.file, &staged).unwrap();
    std::fs::rename(&staged, &ca_live).unwrap();
    let mut applied = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if curl(&pki, ok(&pki.rotated)).await.status == Some(200) {
            applied = true;
            break;
        }
    }
    assert!(applied, "the rotated CA file was not picked up");
    assert_eq!(curl(&pki, ok(&pki.good)).await.status, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_the_shared_ca_gauge() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let own = one_site_toml(&pki, &[SITE], &server, up.addr, "");
    let shared = own.replace(
        &format!("{:?}", pki.zone_ca.file.display().to_string()),
        "\"cloudflare-shared\"",
    );
    let shield = Shield::start(&own).await;
    let gauge = |shield: &Shield| {
        shield
            .metrics_text()
            .contains(&format!("shield_tls_shared_ca_in_use{{site=\"{SITE}\"}} 1"))
    };
    assert!(!gauge(&shield));
    shield
        .frontend
        .reload(&Config::parse(&shared).unwrap())
        .unwrap();
    assert!(gauge(&shield), "{}", shield.metrics_text());
    shield
        .frontend
        .reload(&Config::parse(&own).unwrap())
        .unwrap();
    assert!(!gauge(&shield));
}

/// openssl s_client saves site A's session and offers it to site B on the
/// same listener. A resumes it (the control); B must do a full handshake
/// with its own client-certificate check, which A's client fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_never_resume_across_sites() {
    let pki = Pki::new();
    let up = upstream().await;
    let a = pki.server("site-a", &[SITE]);
    let b = pki.server("site-b", &["www.b.test"]);
    let toml = format!(
        "{HTTP_OFF}{}{}",
        site_toml(
            &[SITE],
            "127.0.0.1:0",
            &a,
            &[&pki.zone_ca.file],
            up.addr,
            ""
        ),
        site_toml(
            &["www.b.test"],
            "127.0.0.1:0",
            &b,
            &[&pki.rotation_ca.file],
            up.addr,
            ""
        ),
    );
    let shield = Shield::start(&toml).await;
    let connect = format!("127.0.0.1:{}", shield.tls_port());
    let session = pki.path().join("a.session").display().to_string();
    let ca = pki.server_ca_file.display().to_string();
    let (cert, key) = (
        pki.good.cert.display().to_string(),
        pki.good.key.display().to_string(),
    );
    let request =
        |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let run = |host: &'static str, sess: (&'static str, String)| {
        let (connect, ca, cert, key) = (connect.clone(), ca.clone(), cert.clone(), key.clone());
        let request = request(host);
        async move {
            s_client(
                &[
                    "-trace",
                    "-connect",
                    &connect,
                    "-servername",
                    host,
                    "-CAfile",
                    &ca,
                    "-cert",
                    &cert,
                    "-key",
                    &key,
                    "-ign_eof",
                    sess.0,
                    &sess.1,
                ],
                request.as_bytes(),
            )
            .await
        }
    };

    let first = run(SITE, ("-sess_out", session.clone())).await;
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    assert!(first.contains("New, TLSv1.3"), "{first}");

    let control = run(SITE, ("-sess_in", session.clone())).await;
    assert!(
        control.contains("Reused, TLSv1.3"),
        "same-site resumption should work: {control}"
    );
    assert!(control.contains("HTTP/1.1 200"), "{control}");

    let cross = run("www.b.test", ("-sess_in", session.clone())).await;
    // The ClientHello did offer A's session to B.
    assert!(
        cross.contains("extension_type=psk(41)"),
        "the session was not even offered: {cross}"
    );
    assert!(
        !cross.contains("Reused"),
        "site B resumed site A's session: {cross}"
    );
    assert!(!cross.contains("HTTP/1.1 200"), "{cross}");
    assert_eq!(
        shield
            .wait_handshakes("www.b.test", HandshakeResult::UnknownCa, 1)
            .await,
        1,
        "B must have checked the certificate itself"
    );
}
