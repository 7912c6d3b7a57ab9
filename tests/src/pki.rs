//! Throwaway certificates for the lab, the TLS bench and the end-to-end
//! tests, made with the openssl CLI (OpenSSL 3, for `req -x509 -CA`): ECDSA P-256 CAs and the
//! leaves they sign, `NAME.pem` and `NAME.key` in a work directory.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// A certificate and its key.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a leaf is for; each adds its extended key usage.
pub enum Usage<'a> {
    /// A TLS server certificate for this DNS name.
    Server(&'a str),
    /// A TLS client certificate (what Cloudflare's edge presents).
    Client,
}

/// A self-signed CA valid for `days`.
pub fn ca(dir: &Path, name: &str, common_name: &str, days: u32) -> anyhow::Result<Cert> {
    make(
        dir,
        name,
        common_name,
        days,
        None,
        &[
            "basicConstraints=critical,CA:TRUE".to_owned(),
            "keyUsage=critical,keyCertSign,cRLSign".to_owned(),
        ],
    )
}

/// A leaf signed by `issuer`, valid for `days`.
pub fn leaf(
    dir: &Path,
    name: &str,
    common_name: &str,
    issuer: &Cert,
    usage: Usage<'_>,
    days: u32,
) -> anyhow::Result<Cert> {
    let mut extensions = vec![
        "basicConstraints=critical,CA:FALSE".to_owned(),
        "keyUsage=critical,digitalSignature".to_owned(),
    ];
    match usage {
        Usage::Server(dns_name) => {
            extensions.push(format!("subjectAltName=DNS:{dns_name}"));
            extensions.push("extendedKeyUsage=serverAuth".to_owned());
        }
        Usage::Client => extensions.push("extendedKeyUsage=clientAuth".to_owned()),
    }
    make(dir, name, common_name, days, Some(issuer), &extensions)
}

fn make(
    dir: &Path,
    name: &str,
    common_name: &str,
    days: u32,
    issuer: Option<&Cert>,
    extensions: &[String],
) -> anyhow::Result<Cert> {
    // A config without default extensions, so only the ones asked for
    // apply (the system's would make every certificate a CA).
    let config = dir.join("openssl-bare.cnf");
    fs::write(&config, "[req]\ndistinguished_name = dn\n[dn]\n")
        .with_context(|| format!("cannot write {}", config.display()))?;
    let made = Cert {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    let mut args: Vec<String> = [
        "req",
        "-config",
        text(&config)?,
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        text(&made.key)?,
        "-out",
        text(&made.cert)?,
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend([
        "-days".to_owned(),
        days.to_string(),
        "-subj".to_owned(),
        format!("/CN={common_name}"),
    ]);
    if let Some(issuer) = issuer {
        args.extend([
            "-CA".to_owned(),
            text(&issuer.cert)?.to_owned(),
            "-CAkey".to_owned(),
            text(&issuer.key)?.to_owned(),
        ]);
    }
    for extension in extensions {
        args.extend(["-addext".to_owned(), extension.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::check("openssl", &args)
        .with_context(|| format!("openssl could not make {name}.pem (OpenSSL 3 is needed)"))?;
    Ok(made)
}

fn text(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "{} is not UTF-8; use a UTF-8 work directory",
            path.display()
        )
    })
}

/// The certificates of one mTLS site in `dir`: a server CA (`server-ca`)
/// and the certificate for `site` (`site`), the zone's AOP CA (`zone-ca`)
/// and the edge's client certificate (`edge`), valid for two days.
pub fn mtls_site(dir: &Path, site: &str) -> anyhow::Result<()> {
    let server_ca = ca(dir, "server-ca", "test server CA", 2)?;
    leaf(dir, "site", site, &server_ca, Usage::Server(site), 2)?;
    let zone_ca = ca(dir, "zone-ca", "test AOP zone CA", 2)?;
    leaf(dir, "edge", "edge", &zone_ca, Usage::Client, 2)?;
    Ok(())
}

/// shield's `[[site]]` for those certificates: `site` on 443, the zone's
/// client certificate required, in front of `upstream`.
pub fn site_toml(dir: &Path, site: &str, upstream: &str) -> String {
    let d = dir.display();
    format!(
        "\n[[site]]\nserver_names = [\"{site}\"]\nlisten = \"0.0.0.0:443\"\ncert = \"{d}/site.pem\"\n\
         key = \"{d}/site.key\"\nclient_ca = [\"{d}/zone-ca.pem\"]\nupstream = \"{upstream}\"\n"
    )
}

/// curl's arguments for one request to `site` at `address` with the
/// edge's certificate, printing only the HTTP status.
pub fn edge_curl_args(dir: &Path, site: &str, address: &str) -> Vec<String> {
    let d = dir.display();
    [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "3",
        "--cacert",
        &format!("{d}/server-ca.pem"),
        "--cert",
        &format!("{d}/edge.pem"),
        "--key",
        &format!("{d}/edge.key"),
        "--resolve",
        &format!("{site}:443:{address}"),
        &format!("https://{site}/"),
    ]
    .map(|s| s.to_owned())
    .to_vec()
}
