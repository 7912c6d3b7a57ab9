//! Client-certificate verification against real curl and openssl clients:
//! every refusal is counted under its own `result` label.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use shield::tls::HandshakeResult::{self, *};
use shield_test_support::{
    pki::Pki,
    tls::{curl, s_client, site_toml, upstream, Req, Shield, HTTP_OFF},
};

const SITE: &str = "www.a.test";

async fn shield_with(
    pki: &Pki,
    extra: &str,
    cas: &[&std::path::Path],
) -> (Shield, shield_test_support::tls::Upstream) {
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE, "a.test"]);
    let toml = format!(
        "{HTTP_OFF}{}",
        site_toml(
            &[SITE, "a.test"],
            "127.0.0.1:0",
            &server,
            cas,
            up.addr,
            extra
        )
    );
    (Shield::start(&toml).await, up)
}

async fn refused(
    shield: &Shield,
    pki: &Pki,
    client: Option<&shield_test_support::pki::Leaf>,
    result: HandshakeResult,
) -> shield_test_support::tls::Curl {
    let before = shield.metrics.handshakes(SITE, result);
    let out = curl(
        pki,
        Req {
            host: SITE,
            port: shield.tls_port(),
            client,
            ..Req::default()
        },
    )
    .await;
    assert_eq!(
        out.status, None,
        "expected a refused handshake, got {out:?}"
    );
    assert_ne!(out.exit, 0, "{out:?}");
    assert_eq!(
        shield.wait_handshakes(SITE, result, before + 1).await,
        before + 1,
        "result {result} not counted; metrics:\n{}",
        shield.metrics_text()
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_client_passes_and_bad_ones_are_refused_by_reason() {
    let pki = Pki::new();
    let crl = format!("client_crl = [{:?}]", pki.zone_crl.display().to_string());
    let (shield, _up) = shield_with(&pki, &crl, &[&pki.zone_ca.file]).await;
    let port = shield.tls_port();

    for http2 in [false, true] {
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port,
                client: Some(&pki.good),
                http2,
                ..Req::default()
            },
        )
        .await;
        assert_eq!(out.status, Some(200), "{out:?}");
        assert!(out.body.starts_with("GET /"), "{out:?}");
    }
    assert_eq!(shield.wait_handshakes(SITE, Ok, 2).await, 2);

    let out = refused(&shield, &pki, None, NoClientCert).await;
    assert!(
        out.stderr.contains("certificate required"),
        "TLS 1.3 alert certificate_required expected: {}",
        out.stderr
    );
    refused(&shield, &pki, Some(&pki.attacker), UnknownCa).await;
    refused(&shield, &pki, Some(&pki.rotated), UnknownCa).await;
    refused(&shield, &pki, Some(&pki.expired), Expired).await;
    refused(&shield, &pki, Some(&pki.not_yet_valid), NotYetValid).await;
    refused(&shield, &pki, Some(&pki.wrong_eku), BadEku).await;
    refused(&shield, &pki, Some(&pki.revoked), Revoked).await;
    // Same subject as the zone CA, other key: the chain's signature fails.
    refused(&shield, &pki, Some(&pki.lookalike), BadSignature).await;

    let text = shield.metrics_text();
    for (result, count) in [
        ("ok", 2),
        ("no_client_cert", 1),
        ("unknown_ca", 2),
        ("expired", 1),
        ("revoked", 1),
        ("bad_eku", 1),
    ] {
        let line =
            format!("shield_tls_handshakes_total{{site=\"{SITE}\",result=\"{result}\"}} {count}");
        assert!(text.contains(&line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_accepts_both_cas() {
    let pki = Pki::new();
    let (shield, _up) = shield_with(&pki, "", &[&pki.zone_ca.file, &pki.rotation_ca.file]).await;
    for client in [&pki.good, &pki.rotated] {
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port: shield.tls_port(),
                client: Some(client),
                ..Req::default()
            },
        )
        .await;
        assert_eq!(out.status, Some(200), "{out:?}");
    }
    refused(&shield, &pki, Some(&pki.attacker), UnknownCa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spki_pins_narrow_the_ca() {
    let pki = Pki::new();
    let pins = format!("client_spki_pins = [{:?}]", pki.good.spki_pin);
    let (shield, _up) = shield_with(&pki, &pins, &[&pki.zone_ca.file]).await;
    let out = curl(
        &pki,
        Req {
            host: SITE,
            port: shield.tls_port(),
            client: Some(&pki.good),
            ..Req::default()
        },
    )
    .await;
    assert_eq!(out.status, Some(200), "{out:?}");
    // Same CA, same name, another key.
    refused(&shield, &pki, Some(&pki.good_other_key), PinMismatch).await;
    // A pin never lets a certificate from another CA in.
    refused(&shield, &pki, Some(&pki.attacker), UnknownCa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_sni_is_refused_at_the_handshake() {
    let pki = Pki::new();
    let (shield, _up) = shield_with(&pki, "", &[&pki.zone_ca.file]).await;
    let port = shield.tls_port();
    let out = curl(
        &pki,
        Req {
            host: "other.test",
            port,
            client: Some(&pki.good),
            ..Req::default()
        },
    )
    .await;
    assert_eq!(out.status, None, "{out:?}");
    assert_eq!(shield.wait_handshakes("", UnknownSni, 1).await, 1);

    // curl sends no SNI to an IP literal.
    let out = shield_test_support::tls::parse_curl(
        tokio::process::Command::new("curl")
            .args(["-sS", "-k", "-w", "\n%{http_code}", "--cert"])
            .arg(&pki.good.cert)
            .arg("--key")
            .arg(&pki.good.key)
            .arg(format!("https://127.0.0.1:{port}/"))
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(out.status, None, "{out:?}");
    assert_eq!(shield.wait_handshakes("", UnknownSni, 2).await, 2);
    assert_eq!(shield.metrics.handshakes(SITE, Ok), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_sees_the_policy() {
    let pki = Pki::new();
    let (shield, _up) = shield_with(&pki, "", &[&pki.zone_ca.file]).await;
    let connect = format!("127.0.0.1:{}", shield.tls_port());
    let request = format!("GET /hello HTTP/1.1\r\nHost: {SITE}\r\nConnection: close\r\n\r\n");
    let ca = pki.server_ca_file.display().to_string();
    let (cert, key) = (
        pki.good.cert.display().to_string(),
        pki.good.key.display().to_string(),
    );

    let out = s_client(
        &[
            "-connect",
            &connect,
            "-servername",
            SITE,
            "-CAfile",
            &ca,
            "-cert",
            &cert,
            "-key",
            &key,
            "-ign_eof",
        ],
        request.as_bytes(),
    )
    .await;
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("GET /hello"), "{out}");
    // The CertificateRequest names the acceptable CA.
    assert!(
        out.contains("Acceptable client certificate CA names"),
        "{out}"
    );
    assert!(out.contains("Example Zone AOP CA"), "{out}");

    let out = s_client(
        &[
            "-connect",
            &connect,
            "-servername",
            SITE,
            "-CAfile",
            &ca,
            "-ign_eof",
        ],
        request.as_bytes(),
    )
    .await;
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains("certificate required"), "{out}");
    assert_eq!(shield.wait_handshakes(SITE, NoClientCert, 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_cloudflare_ca_works_and_is_flagged() {
    let pki = Pki::new();
    let up = upstream().await;
    let a = pki.server("site-a", &[SITE]);
    let b = pki.server("site-b", &["www.b.test"]);
    let shared = std::path::Path::new("cloudflare-shared");
    let toml = format!(
        "{HTTP_OFF}{}{}",
        site_toml(&[SITE], "127.0.0.1:0", &a, &[shared], up.addr, ""),
        site_toml(
            &["www.b.test"],
            "127.0.0.1:0",
            &b,
            &[&pki.zone_ca.file],
            up.addr,
            ""
        ),
    );
    let shield = Shield::start(&toml).await;
    let text = shield.metrics_text();
    assert!(
        text.contains(&format!("shield_tls_shared_ca_in_use{{site=\"{SITE}\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains("shield_tls_shared_ca_in_use{site=\"www.b.test\"} 0"),
        "{text}"
    );
    // Our zone client is not a Cloudflare shared certificate.
    refused(&shield, &pki, Some(&pki.good), UnknownCa).await;
    let out = curl(
        &pki,
        Req {
            host: "www.b.test",
            port: shield.tls_port(),
            client: Some(&pki.good),
            ..Req::default()
        },
    )
    .await;
    assert_eq!(out.status, Some(200), "{out:?}");
}
