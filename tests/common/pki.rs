//! Throw-away certificates for TLS tests, generated per test with rcgen and
//! written to a temporary directory. No key is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use tempfile::TempDir;

/// A certificate authority that can issue server and client certificates.
pub struct Ca {
    pub cert_pem: String,
    params: CertificateParams,
    key: KeyPair,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            cert_pem: cert.pem(),
            params,
            key,
        }
    }

    /// Writes the CA certificate to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.cert_pem).expect("write CA");
        path
    }

    fn issue(&self, dir: &Path, name: &str, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let pair = Pair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `names`.
    pub fn server(&self, dir: &Path, name: &str, names: &[&str]) -> Pair {
        let mut sans: Vec<String> = vec!["localhost".into()];
        sans.extend(names.iter().map(|n| n.to_string()));
        let mut params = CertificateParams::new(sans).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        self.issue(dir, name, params)
    }

    /// A server certificate for exactly `names` (no `localhost`, no IP), so
    /// only a connection that sends one of them as its server name accepts it.
    pub fn server_named(&self, dir: &Path, name: &str, names: &[&str]) -> Pair {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.issue(dir, name, CertificateParams::new(sans).expect("params"))
    }

    /// A client certificate; `expired` makes one whose validity ended.
    pub fn client(&self, dir: &Path, name: &str, expired: bool) -> Pair {
        let mut params = CertificateParams::new(vec![format!("{name}.client")]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        self.issue(dir, name, params)
    }
}

/// A directory of certificates for one test.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
    pub ca_file: PathBuf,
    pub server: Pair,
    pub client: Pair,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test ca");
        let ca_file = ca.write(dir.path(), "ca.crt");
        let server = ca.server(dir.path(), "server", &["redis.internal"]);
        let client = ca.client(dir.path(), "client", false);
        Self {
            dir,
            ca,
            ca_file,
            server,
            client,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
