//! The host's own AOP PKI: a CA that stays on this host, and the client
//! certificate it signs for Cloudflare to present on every origin pull.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::AopError;

/// The CA outlives several client certificates, so it is valid longer.
const CA_VALIDITY: time::Duration = time::Duration::days(10 * 365);
const CLIENT_VALIDITY: time::Duration = time::Duration::days(5 * 365);
/// Covers a host clock slightly behind Cloudflare's.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// Where the four files go, in the directory the operator chose.
#[derive(Debug, Clone)]
pub struct Paths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Paths {
    pub fn in_dir(dir: &Path) -> Paths {
        Paths {
            ca_cert: dir.join("aop-zone-ca.pem"),
            ca_key: dir.join("aop-zone-ca.key"),
            client_cert: dir.join("aop-client.pem"),
            client_key: dir.join("aop-client.key"),
        }
    }

    pub fn all(&self) -> [&Path; 4] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.client_cert,
            &self.client_key,
        ]
    }

    /// Refuses before anything is written, so a refusal leaves no partial
    /// set behind.
    pub fn check_free(&self, overwrite: bool) -> Result<(), AopError> {
        if overwrite {
            return Ok(());
        }
        match self.all().into_iter().find(|path| path.exists()) {
            Some(path) => Err(AopError::Exists {
                path: path.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// The generated PEM texts. The keys are secrets: no `Debug`.
pub struct Generated {
    pub ca_cert: String,
    pub ca_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// A fresh ECDSA P-256 CA and a client certificate (EKU clientAuth) signed
/// by it, named after `label` (the site's first server name).
pub fn generate(label: &str) -> Result<Generated, AopError> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(AopError::Pki)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(AopError::Pki)?;
    ca.distinguished_name = name(&format!("{label} AOP CA (shield)"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - BACKDATE;
    ca.not_after = now + CA_VALIDITY;
    let ca_cert = ca.self_signed(&ca_key).map_err(AopError::Pki)?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let client_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(AopError::Pki)?;
    let mut client = CertificateParams::new(Vec::<String>::new()).map_err(AopError::Pki)?;
    client.distinguished_name = name(&format!("cloudflare-origin-pull.{label}"));
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.not_before = now - BACKDATE;
    client.not_after = now + CLIENT_VALIDITY;
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .map_err(AopError::Pki)?;
    Ok(Generated {
        ca_cert: ca_cert_pem,
        ca_key: ca_key_pem,
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes the four files: keys 0600, certificates 0644 (the daemon and
/// tools read them). Each lands atomically (a temporary file renamed into
/// place), so a crash never leaves a truncated key.
pub fn write(paths: &Paths, generated: &Generated, overwrite: bool) -> Result<(), AopError> {
    if let Some(dir) = paths.ca_cert.parent() {
        std::fs::create_dir_all(dir).map_err(|source| AopError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_file(&paths.ca_key, &generated.ca_key, 0o600, overwrite)?;
    write_file(&paths.ca_cert, &generated.ca_cert, 0o644, overwrite)?;
    write_file(&paths.client_key, &generated.client_key, 0o600, overwrite)?;
    write_file(&paths.client_cert, &generated.client_cert, 0o644, overwrite)
}

/// `text` into `path` with `mode`, atomically; without `overwrite` an
/// existing file (even one created since the check) is never replaced.
pub fn write_file(path: &Path, text: &str, mode: u32, overwrite: bool) -> Result<(), AopError> {
    let failed = |source| AopError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The temporary file is created 0600 by tempfile, so a key is never
    // readable by others, not even for a moment.
    let mut file = tempfile::Builder::new()
        .prefix(".shield-aop-")
        .tempfile_in(dir)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    if overwrite {
        file.persist(path).map_err(|error| failed(error.error))?;
    } else {
        file.persist_noclobber(path).map_err(|error| {
            if error.error.kind() == std::io::ErrorKind::AlreadyExists {
                AopError::Exists {
                    path: path.to_owned(),
                }
            } else {
                failed(error.error)
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use rustls::pki_types::{pem::PemObject as _, CertificateDer};

    use super::*;

    #[test]
    fn client_certificate_chains_to_the_ca_for_client_auth() {
        let generated = generate("www.example.test").unwrap();
        let ca = CertificateDer::from_pem_slice(generated.ca_cert.as_bytes()).unwrap();
        let leaf = CertificateDer::from_pem_slice(generated.client_cert.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&leaf, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
    }

    #[test]
    fn files_get_their_modes_and_are_not_overwritten_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(&dir.path().join("aop"));
        let generated = generate("a.test").unwrap();
        paths.check_free(false).unwrap();
        write(&paths, &generated, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.client_key), 0o600);
        assert_eq!(mode(&paths.ca_cert), 0o644);
        assert_eq!(mode(&paths.client_cert), 0o644);
        assert!(matches!(
            paths.check_free(false),
            Err(AopError::Exists { .. })
        ));
        assert!(matches!(
            write(&paths, &generated, false),
            Err(AopError::Exists { .. })
        ));
        let again = generate("a.test").unwrap();
        write(&paths, &again, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&paths.ca_cert).unwrap(),
            again.ca_cert
        );
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("aop")).unwrap().count(),
            4
        );
    }
}
