//! Why an enrollment stopped. Every failure after the upload names the
//! zone's state and the requests that undo it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::api::ApiError;

/// The requests that take an uploaded certificate (and AOP) back out of a
/// zone, spelled as commands the operator can paste.
#[derive(Debug, Clone)]
pub struct Undo {
    pub token_file: PathBuf,
    pub certificate_url: String,
    pub settings_url: String,
}

impl std::fmt::Display for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is read from its file by the shell, never printed.
        let auth = format!(
            "-H \"Authorization: Bearer $(cat {})\"",
            self.token_file.display()
        );
        write!(
            f,
            "to turn AOP off: curl -X PUT {auth} -H 'Content-Type: application/json' --data '{{\"enabled\":false}}' {}; to remove the certificate: curl -X DELETE {auth} {}",
            self.settings_url, self.certificate_url
        )
    }
}

/// Why `shield aop enroll` stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AopError {
    /// The token file is missing or unreadable.
    #[error("cannot read the API token file {path}")]
    TokenRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The token file may be read or written by the group or others.
    #[error("the API token file {path} is accessible to group or others (mode {mode:03o}); run `chmod 600 {path}` (and roll the token if others may have read it)")]
    TokenPermissions { path: PathBuf, mode: u32 },
    /// The token file holds nothing that can be a token.
    #[error("the API token file {path} must hold the token alone (one word, no spaces)")]
    TokenInvalid { path: PathBuf },
    /// The zone id is not one Cloudflare issues.
    #[error(
        "--zone {zone:?} is not a zone id (the 32-character hex id on the zone's overview page)"
    )]
    ZoneInvalid { zone: String },
    /// shield.toml cannot be read.
    #[error("cannot read the config {path}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// shield.toml (as it is, or as edited) is not a config shield runs.
    #[error("the config {path} is not valid; fix it, then run enroll again")]
    ConfigInvalid {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// shield.toml cannot be edited (its TOML, or the site's `client_ca`).
    #[error("cannot add the CA to {path}: {reason}")]
    ConfigEdit { path: PathBuf, reason: String },
    /// The config has no `[[site]]`, so no TLS listener to protect.
    #[error("the config has no [[site]]; add the site first (AOP protects its TLS listener)")]
    NoSite,
    /// Several sites, and `--site` names none.
    #[error("the config has several sites ({sites}); choose one with --site SERVER_NAME")]
    SiteAmbiguous { sites: String },
    /// `--site` names no site of the config.
    #[error("no site has the server name {wanted:?}; the sites are: {sites}")]
    SiteUnknown { wanted: String, sites: String },
    /// A file to be written exists already.
    #[error(
        "{path} exists; pass --overwrite to replace the files, or --dir for another directory"
    )]
    Exists { path: PathBuf },
    /// Key or certificate generation failed.
    #[error("cannot generate the AOP CA and client certificate")]
    Pki(#[source] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The reload could not be asked for.
    #[error("cannot reload the daemon ({how}); reload it yourself, then run enroll again")]
    ReloadSpawn {
        how: String,
        #[source]
        source: std::io::Error,
    },
    /// The reload command failed.
    #[error("reloading the daemon ({how}) failed: {status}; is shield running? Use --pid PID for a daemon outside systemd")]
    ReloadFailed { how: String, status: String },
    /// The handshake check could not be prepared.
    #[error("cannot prepare the handshake check: {reason}")]
    ProbeSetup { reason: String },
    /// The daemon does not accept the new client certificate.
    #[error("shield at {address} still refuses the new client certificate after {waited:?} (last attempt: {last}); nothing was sent to Cloudflare. Look for `reload refused` in the daemon's log (journalctl -u shield), or give the site's address with --verify-address")]
    NotAccepted {
        address: SocketAddr,
        waited: Duration,
        last: String,
    },
    /// The upload failed: the zone is as it was, unless the answer was lost.
    #[error("zone {zone}: the upload failed, AOP was not enabled{}", lost_upload(.unknown, .list_url))]
    UploadFailed {
        zone: String,
        /// True when the request may have reached Cloudflare (timeout).
        unknown: bool,
        list_url: String,
        #[source]
        source: ApiError,
    },
    /// The certificate did not become `active` in time, or failed.
    #[error("zone {zone}: certificate {id} is uploaded but its status is `{status}` after {waited:?}; AOP was NOT enabled (shield already accepts the certificate). Check it later with GET {}, then enable AOP with `curl -X PUT ... {{\"enabled\":true}} {}`; {undo}", .undo.certificate_url, .undo.settings_url)]
    NotActive {
        zone: String,
        id: String,
        status: String,
        waited: Duration,
        undo: Box<Undo>,
    },
    /// The certificate's status could not be read.
    #[error("zone {zone}: certificate {id} is uploaded, its status is unknown; AOP was NOT enabled; {undo}")]
    StatusUnreadable {
        zone: String,
        id: String,
        undo: Box<Undo>,
        #[source]
        source: ApiError,
    },
    /// Enabling AOP failed.
    #[error("zone {zone}: certificate {id} is uploaded and active, but AOP is {}enabled (shield accepts the certificate, so enabling it is safe: run enroll's last step by hand with PUT {} {{\"enabled\":true}}); {undo}", maybe(.unknown), .undo.settings_url)]
    EnableFailed {
        zone: String,
        id: String,
        /// True when the request may have reached Cloudflare (timeout).
        unknown: bool,
        undo: Box<Undo>,
        #[source]
        source: ApiError,
    },
    /// The API client could not be set up.
    #[error("cannot set up the Cloudflare API client")]
    Api(#[source] ApiError),
}

fn lost_upload(unknown: &bool, list_url: &str) -> String {
    if *unknown {
        format!("; the answer was lost, so the certificate may be uploaded: list the zone's certificates with GET {list_url} and DELETE any you do not want")
    } else {
        String::new()
    }
}

fn maybe(unknown: &bool) -> &'static str {
    if *unknown {
        "possibly "
    } else {
        "not "
    }
}
