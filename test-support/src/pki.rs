//! The test PKI: a server CA and site certificates, the zone AOP CA, a
//! second CA for rotation, an attacker's CA, a look-alike of the zone CA
//! (same subject, other key), and client leaves good and bad.

use std::path::{Path, PathBuf};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber,
};
use sha2::{Digest, Sha256};

/// A certificate and key written to files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
    /// The key's PKCS#8 DER, for a rustls config built in the test.
    pub key_der: Vec<u8>,
    /// base64 SHA-256 of the SubjectPublicKeyInfo (a `client_spki_pins` entry).
    pub spki_pin: String,
}

impl Leaf {
    /// Hex SHA-256 of the certificate DER.
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

pub struct Ca {
    pub file: PathBuf,
    pub der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub server_ca_file: PathBuf,
    server_ca: Ca,
    pub zone_ca: Ca,
    pub rotation_ca: Ca,
    pub attacker_ca: Ca,
    pub lookalike_ca: Ca,
    /// Zone CA client certificates.
    pub good: Leaf,
    pub good_other_key: Leaf,
    pub expired: Leaf,
    pub not_yet_valid: Leaf,
    pub wrong_eku: Leaf,
    pub revoked: Leaf,
    /// Other issuers.
    pub rotated: Leaf,
    pub attacker: Leaf,
    pub lookalike: Leaf,
    /// CRL of the zone CA listing `revoked`.
    pub zone_crl: PathBuf,
}

const REVOKED_SERIAL: u64 = 0x5eed_0bad;
const ZONE_CA_NAME: &str = "Example Zone AOP CA";

fn ca(dir: &Path, file: &str, cn: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "shield tests");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, cert.pem()).unwrap();
    Ca {
        file: path,
        der: cert.der().to_vec(),
        issuer: Issuer::new(params, key),
    }
}

/// What a leaf looks like; defaults make a valid client certificate.
pub struct LeafSpec<'a> {
    pub name: &'a str,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: (i32, u8, u8),
    pub not_after: (i32, u8, u8),
    pub serial: Option<u64>,
}

impl<'a> LeafSpec<'a> {
    pub fn client(name: &'a str) -> Self {
        LeafSpec {
            name,
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before: (2020, 1, 1),
            not_after: (2090, 1, 1),
            serial: None,
        }
    }
}

impl Ca {
    pub fn issue(&self, dir: &Path, file: &str, spec: LeafSpec<'_>) -> Leaf {
        let mut params = CertificateParams::new(vec![spec.name.to_owned()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.name);
        params.distinguished_name = dn;
        params.extended_key_usages = spec.eku;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (y, m, d) = spec.not_before;
        params.not_before = date_time_ymd(y, m, d);
        let (y, m, d) = spec.not_after;
        params.not_after = date_time_ymd(y, m, d);
        params.serial_number = spec.serial.map(SerialNumber::from);
        params.use_authority_key_identifier_extension = true;
        self.sign(params, dir, file)
    }

    /// `params` signed with a fresh key, written to `dir/FILE.pem` and
    /// `dir/FILE.key`.
    fn sign(&self, params: CertificateParams, dir: &Path, file: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{file}.pem"));
        let key_path = dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            spki_pin: BASE64.encode(Sha256::digest(key.subject_public_key_info())),
        }
    }

    /// A CRL from this CA listing `serials`.
    pub fn crl(&self, dir: &Path, file: &str, serials: &[u64]) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).unwrap();
        let path = dir.join(file);
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

impl Pki {
    /// Every CA and leaf above, freshly generated in a temporary directory.
    pub fn new() -> Pki {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let server_ca = ca(&dir, "server-ca.pem", "shield test server CA");
        let zone_ca = ca(&dir, "zone-ca.pem", ZONE_CA_NAME);
        let rotation_ca = ca(&dir, "rotation-ca.pem", "Example Zone AOP CA 2");
        let attacker_ca = ca(&dir, "attacker-ca.pem", "Attacker CA");
        let lookalike_ca = ca(&dir, "lookalike-ca.pem", ZONE_CA_NAME);
        let client = LeafSpec::client;
        let good = zone_ca.issue(&dir, "good", client("origin-pull.example"));
        let good_other_key = zone_ca.issue(&dir, "good-other-key", client("origin-pull.example"));
        let expired = zone_ca.issue(
            &dir,
            "expired",
            LeafSpec {
                not_before: (2000, 1, 1),
                not_after: (2001, 1, 1),
                ..client("expired.example")
            },
        );
        let not_yet_valid = zone_ca.issue(
            &dir,
            "not-yet-valid",
            LeafSpec {
                not_before: (2080, 1, 1),
                ..client("future.example")
            },
        );
        let wrong_eku = zone_ca.issue(
            &dir,
            "wrong-eku",
            LeafSpec {
                eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
                ..client("server-only.example")
            },
        );
        let revoked = zone_ca.issue(
            &dir,
            "revoked",
            LeafSpec {
                serial: Some(REVOKED_SERIAL),
                ..client("revoked.example")
            },
        );
        let rotated = rotation_ca.issue(&dir, "rotated", client("origin-pull.example"));
        let attacker = attacker_ca.issue(&dir, "attacker", client("origin-pull.example"));
        let lookalike = lookalike_ca.issue(&dir, "lookalike", client("origin-pull.example"));
        let zone_crl = zone_ca.crl(&dir, "zone.crl", &[REVOKED_SERIAL]);
        Pki {
            server_ca_file: server_ca.file.clone(),
            server_ca,
            zone_ca,
            rotation_ca,
            attacker_ca,
            lookalike_ca,
            good,
            good_other_key,
            expired,
            not_yet_valid,
            wrong_eku,
            revoked,
            rotated,
            attacker,
            lookalike,
            zone_crl,
            dir: tmp,
        }
    }

    /// The server CA's certificate, for a client that trusts it.
    pub fn server_ca_der(&self) -> &[u8] {
        &self.server_ca.der
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `names` from the server CA.
    pub fn server(&self, file: &str, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0]);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        self.server_ca.sign(params, self.path(), file)
    }
}
