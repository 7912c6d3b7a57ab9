//! A site's TLS side (certificate, client policy, session cache) built from
//! its [`SiteConfig`], and the per-listener table that SNI selects from.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rustls::{
    server::{ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};

use super::{load, verify::ClientPolicy, TlsError};
use crate::{
    config::{ClientCa, H2Limits, SiteConfig},
    proxy::Route,
};

/// Sessions kept per site for resumption. Cloudflare keeps few connections
/// per origin and resumes them. An entry holds the client's certificate
/// chain, about 2 KB (a heap profile with one client certificate), so a
/// full cache is about 8 MB per site.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// ALPN, in server preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// One `[[site]]`, ready to serve.
#[derive(Debug)]
pub struct Site {
    pub route: Arc<Route>,
    /// This site's rustls config. Each site has its own session cache, so
    /// a session established with site A is unknown to site B and cannot be
    /// used to skip B's client-certificate check. A reload builds new
    /// configs with empty caches, so a CA, CRL or pin change also applies
    /// to clients that would otherwise resume.
    pub tls: Arc<ServerConfig>,
    pub uses_shared_ca: bool,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub h2: H2Limits,
}

impl Site {
    pub fn build(config: &SiteConfig) -> Result<Site, TlsError> {
        Site::build_inner(config).map_err(|source| TlsError::InSite {
            site: config.label().to_owned(),
            source: Box::new(source),
        })
    }

    fn build_inner(config: &SiteConfig) -> Result<Site, TlsError> {
        let provider = super::provider();
        let chain = load::certificates(&config.cert)?;
        let key = load::private_key(&config.key)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::Key {
                path: config.key.clone(),
                source: super::KeyError::Unsupported(source),
            })?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|source| TlsError::KeyMismatch {
                key: config.key.clone(),
                cert: config.cert.clone(),
                source,
            })?;

        let mut roots = RootCertStore::empty();
        let mut uses_shared_ca = false;
        for entry in &config.client_ca {
            let (path, certs) = match entry {
                ClientCa::CloudflareShared => {
                    uses_shared_ca = true;
                    let path = load::shared_ca_path();
                    let certs = load::certificates_from(load::CLOUDFLARE_ORIGIN_PULL_CA, &path)?;
                    (path, certs)
                }
                ClientCa::File(path) => (path.clone(), load::certificates(path)?),
            };
            for cert in certs {
                roots.add(cert).map_err(|source| TlsError::BadCa {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        let mut crls = Vec::new();
        for path in &config.client_crl {
            crls.extend(load::crls(path)?);
        }
        let policy = ClientPolicy::new(
            roots,
            crls,
            config.client_spki_pins.clone(),
            provider.clone(),
        )?;

        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocol)?
            .with_client_cert_verifier(Arc::new(policy))
            .with_cert_resolver(Arc::new(SingleCert(Arc::new(certified))));
        tls.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        tls.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        // 0-RTT data can be replayed by anyone who saw it; an origin behind
        // a proxy gains nothing from it. (rustls' default, stated here.)
        tls.max_early_data_size = 0;

        Ok(Site {
            route: Arc::new(Route::new(config)),
            tls: Arc::new(tls),
            uses_shared_ca,
            handshake_timeout: config.handshake_timeout,
            max_connections: config.max_connections,
            h2: config.h2_limits(),
        })
    }

    pub fn label(&self) -> &str {
        &self.route.label
    }
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The sites sharing one listening address, by lowercase server name.
#[derive(Debug, Default)]
pub struct SiteTable {
    by_name: HashMap<String, Arc<Site>>,
    /// The longest `handshake_timeout` of these sites: the budget for the
    /// ClientHello, before SNI says which site's own timeout applies.
    pub hello_timeout: Duration,
    /// The largest `max_connections` of these sites: the listener's cap,
    /// since a connection's site is known only after its ClientHello.
    pub max_connections: usize,
}

impl SiteTable {
    pub fn insert(&mut self, site: Arc<Site>) {
        self.hello_timeout = self.hello_timeout.max(site.handshake_timeout);
        self.max_connections = self.max_connections.max(site.max_connections);
        for name in &site.route.names {
            self.by_name.insert(name.clone(), site.clone());
        }
    }

    /// The site for an SNI value; none for a missing or unknown name.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<Site>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        self.by_name.get(&name)
    }

    pub fn sites(&self) -> impl Iterator<Item = &Arc<Site>> {
        let mut seen: Vec<&Arc<Site>> = Vec::new();
        for site in self.by_name.values() {
            if !seen.iter().any(|s| Arc::ptr_eq(s, site)) {
                seen.push(site);
            }
        }
        seen.into_iter()
    }
}
