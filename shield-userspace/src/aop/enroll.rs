//! The four steps of an enrollment, in the order that never locks
//! Cloudflare out, and the dry run that only describes them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use rustls::pki_types::CertificateDer;

use super::{
    api::{Api, ApiError},
    config_edit::{self, Edit},
    error::Undo,
    pki::{self, Paths},
    reload::{self, Probe, Reload},
    token::Token,
    AopError,
};
use crate::config::Config;

/// Where progress lines go (stdout in the binary).
pub type Output<'a> = &'a mut dyn FnMut(&str);

/// Everything `shield aop enroll` was told.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub zone: String,
    pub token_file: PathBuf,
    pub config: PathBuf,
    /// A server name of the site, when the config has several.
    pub site: Option<String>,
    /// Where the CA and client files go (absolute: the config names it).
    pub dir: PathBuf,
    pub overwrite: bool,
    pub reload: Reload,
    /// Where to reach the site for the check, instead of its listen address.
    pub verify_address: Option<SocketAddr>,
    pub verify_timeout: Duration,
    /// The bound on waiting for the certificate to become `active`.
    pub activation_timeout: Duration,
    pub api_base: String,
    /// Trust only these roots for the API (a test's fake).
    pub api_roots: Option<Vec<CertificateDer<'static>>>,
    /// Per API request.
    pub api_timeout: Duration,
    pub dry_run: bool,
}

/// Polls start quick (a certificate is often active within seconds) and
/// back off to this.
const POLL_MAX: Duration = Duration::from_secs(30);
const POLL_FIRST: Duration = Duration::from_secs(1);

/// Runs the enrollment (or, with `dry_run`, prints it). Nothing reaches
/// Cloudflare before shield has proven that it accepts the new client
/// certificate.
pub async fn enroll(options: &EnrollOptions, out: Output<'_>) -> Result<(), AopError> {
    // Everything that can be refused without side effects is checked
    // first, in a dry run too, so a real run does not stop half-way.
    if options.zone.is_empty()
        || options.zone.len() > 32
        || !options.zone.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(AopError::ZoneInvalid {
            zone: options.zone.clone(),
        });
    }
    let token = Token::from_file(&options.token_file)?;
    let config = Config::load(&options.config).map_err(|source| AopError::ConfigInvalid {
        path: options.config.clone(),
        source: source.into(),
    })?;
    let chosen = config_edit::choose_site(&config, options.site.as_deref())?;
    let label = chosen.site.label().to_owned();
    let paths = Paths::in_dir(&options.dir);
    paths.check_free(options.overwrite)?;
    let probe = Probe {
        address: options
            .verify_address
            .unwrap_or_else(|| reload::local_address(chosen.site.listen)),
        server_name: label.clone(),
        site_cert: chosen.site.cert.clone(),
        client_cert: paths.client_cert.clone(),
        client_key: paths.client_key.clone(),
    };
    let api = Api::new(
        &options.api_base,
        &token,
        options.api_timeout,
        options.api_roots.clone(),
    )
    .map_err(AopError::Api)?;
    let zone = options.zone.as_str();
    let undo = |id: &str| {
        Box::new(Undo {
            token_file: options.token_file.clone(),
            certificate_url: api.certificate_url(zone, id),
            settings_url: api.settings_url(zone),
        })
    };

    if options.dry_run {
        out("dry run: nothing is written, reloaded or sent");
        dry_run(options, &paths, &chosen.index, &label, &probe, &api, out);
        return Ok(());
    }

    // 1. The CA and client certificate.
    let generated = pki::generate(&label)?;
    pki::write(&paths, &generated, options.overwrite)?;
    out(&format!(
        "1/4 wrote the CA {} (key {}, 0600) and the client certificate {} (key {}, 0600)",
        paths.ca_cert.display(),
        paths.ca_key.display(),
        paths.client_cert.display(),
        paths.client_key.display()
    ));

    // 2. shield accepts the CA, proven before Cloudflare hears of it.
    let edit = config_edit::add_client_ca(&options.config, chosen.index, &paths.ca_cert)?;
    out(&match edit {
        Edit::Added => format!(
            "2/4 added {} to site[{}] ({label}) client_ca in {}",
            paths.ca_cert.display(),
            chosen.index,
            options.config.display()
        ),
        Edit::AlreadyListed => format!(
            "2/4 site[{}] ({label}) already lists {} in client_ca",
            chosen.index,
            paths.ca_cert.display()
        ),
    });
    options.reload.trigger()?;
    out(&format!("    reloaded ({})", options.reload));
    probe.wait_accepted(options.verify_timeout).await?;
    out(&format!(
        "    verified: shield accepts the new client certificate ({probe})"
    ));

    // 3. Upload, then wait for Cloudflare to deploy it.
    let uploaded = api
        .upload(zone, &generated.client_cert, &generated.client_key)
        .await
        .map_err(|source| AopError::UploadFailed {
            zone: zone.to_owned(),
            unknown: matches!(source, ApiError::Timeout { .. }),
            list_url: api.certificates_url(zone),
            source,
        })?;
    let id = uploaded.id.clone();
    out(&format!(
        "3/4 uploaded the client certificate to zone {zone}: id {id}, status {}",
        uploaded.status.as_deref().unwrap_or("unknown")
    ));
    wait_active(&api, zone, uploaded, options.activation_timeout, &undo, out).await?;
    out(&format!("    certificate {id} is active"));

    // 4. Only now may Cloudflare present it.
    api.enable(zone)
        .await
        .map_err(|source| AopError::EnableFailed {
            zone: zone.to_owned(),
            id: id.clone(),
            unknown: matches!(source, ApiError::Timeout { .. }),
            undo: undo(&id),
            source,
        })?;
    out(&format!(
        "4/4 enabled zone-level Authenticated Origin Pulls for zone {zone}; Cloudflare now presents certificate {id}"
    ));
    // Left for the operator: removing it is their call, once traffic shows
    // the new certificate in use.
    if chosen
        .site
        .client_ca
        .iter()
        .any(|ca| matches!(ca, crate::config::ClientCa::CloudflareShared))
    {
        out("note: the site still trusts \"cloudflare-shared\" (any Cloudflare customer's certificate); remove it from client_ca and reload");
    }
    Ok(())
}

/// Polls the certificate with backoff until `active`, a status that will
/// never become it, or `timeout`.
async fn wait_active(
    api: &Api,
    zone: &str,
    mut certificate: super::api::Certificate,
    timeout: Duration,
    undo: &dyn Fn(&str) -> Box<Undo>,
    out: Output<'_>,
) -> Result<(), AopError> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut pause = POLL_FIRST;
    loop {
        let status = certificate.status.clone().unwrap_or_default();
        let not_active = |status: String| AopError::NotActive {
            zone: zone.to_owned(),
            id: certificate.id.clone(),
            status,
            waited: started.elapsed(),
            undo: undo(&certificate.id),
        };
        match status.as_str() {
            "active" => return Ok(()),
            // Cloudflare gave up on it, or it is going away.
            "deployment_timed_out" | "pending_deletion" | "deleted" | "deletion_timed_out" => {
                return Err(not_active(status))
            }
            _ => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(not_active(if status.is_empty() {
                "unknown".to_owned()
            } else {
                status
            }));
        }
        out(&format!(
            "    status {}; asking again in {:?}",
            if status.is_empty() {
                "unknown"
            } else {
                &status
            },
            pause.min(deadline - now)
        ));
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(POLL_MAX);
        let id = certificate.id.clone();
        certificate =
            api.certificate(zone, &id)
                .await
                .map_err(|source| AopError::StatusUnreadable {
                    zone: zone.to_owned(),
                    id: id.clone(),
                    undo: undo(&id),
                    source,
                })?;
        // An answer without the id still describes the one asked for.
        if certificate.id.is_empty() {
            certificate.id = id;
        }
    }
}

/// What a real run would do, step by step: paths and requests, never the
/// token or key material.
fn dry_run(
    options: &EnrollOptions,
    paths: &Paths,
    index: &usize,
    label: &str,
    probe: &Probe,
    api: &Api,
    out: Output<'_>,
) {
    let zone = options.zone.as_str();
    let replace = if options.overwrite {
        " (replacing existing files)"
    } else {
        ""
    };
    out(&format!(
        "1/4 would write an ECDSA P-256 CA {} (key {}, 0600) and a client certificate {} (key {}, 0600) signed by it{replace}",
        paths.ca_cert.display(),
        paths.ca_key.display(),
        paths.client_cert.display(),
        paths.client_key.display()
    ));
    out(&format!(
        "2/4 would add {} to site[{index}] ({label}) client_ca in {}, reload the daemon ({}) and wait up to {:?} until {probe} succeeds",
        paths.ca_cert.display(),
        options.config.display(),
        options.reload,
        options.verify_timeout
    ));
    out(&format!(
        "3/4 would send POST {} (Authorization: Bearer <token from {}>; body: certificate {} and its private key), then GET {} until its status is active (up to {:?})",
        api.certificates_url(zone),
        options.token_file.display(),
        paths.client_cert.display(),
        api.certificate_url(zone, "{id}"),
        options.activation_timeout
    ));
    out(&format!(
        "4/4 would send PUT {} with {{\"enabled\":true}}",
        api.settings_url(zone)
    ));
}
