//! TLS material: the plugin's own port (TLS or mTLS, reloaded when the files
//! change) and the client side towards Redis.
//!
//! For the port, [`ReloadingAcceptor`] holds the current rustls server
//! config behind an `ArcSwap`; a watcher re-reads the PEM files when their
//! modification time or size changes, and swaps in the new config only if it
//! loads — a bad file keeps the old certificates and is logged and counted.
//! New connections use the new config; connections already open keep theirs,
//! so a rotation drops no call. This module does not serve gRPC.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, info, warn};

use crate::{
    config::{RedisTls, ServerTls},
    metrics::{Metrics, Outcome},
    shutdown::{Phase, Watch},
};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material could not be loaded. Names files, never their content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls client verifier: {0}")]
    Verifier(String),
}

fn file_err(path: &str, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    // Err means one is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn load_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

/// Builds the server config: HTTP/2 for gRPC and HTTP/1.1 for `/metrics`.
pub fn server_config(t: &ServerTls) -> Result<ServerConfig, TlsError> {
    install_crypto_provider();
    let certs = load_certs(&t.cert_file)?;
    let key = load_key(&t.key_file)?;
    let builder = ServerConfig::builder();
    let builder = if t.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = Arc::new(load_roots(&t.client_ca_file)?);
        let verifier = WebPkiClientVerifier::builder(roots)
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client side towards Redis: trusted roots (the CA file, or the
/// system's), an optional client certificate for `tls-auth-clients yes`,
/// or no verification at all when `insecure_skip_verify` is set.
pub fn redis_client_config(t: &RedisTls) -> Result<ClientConfig, TlsError> {
    install_crypto_provider();
    let builder = ClientConfig::builder();
    let builder = if t.insecure_skip_verify {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else if t.ca_file.is_empty() {
        builder.with_root_certificates(system_roots())
    } else {
        builder.with_root_certificates(load_roots(&t.ca_file)?)
    };
    let config = match (t.cert_file.as_str(), t.key_file.as_str()) {
        ("", _) | (_, "") => builder.with_no_client_auth(),
        (cert, key) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
    };
    Ok(config)
}

/// The operating system's trusted roots; unreadable ones are skipped (a
/// server signed by them then fails verification, with that error).
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "could not load some system root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    debug!(added, ignored, "system root certificates");
    roots
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake
/// signatures are still checked (so the session keys are the peer's).
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// === impl ReloadingAcceptor ===

/// Accepts TLS connections with the current config and reloads it when the
/// files change.
pub struct ReloadingAcceptor {
    settings: ServerTls,
    current: ArcSwap<ServerConfig>,
    metrics: Arc<Metrics>,
}

/// A file's identity for change detection.
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl ReloadingAcceptor {
    /// Loads the files once; a failure here stops start-up.
    pub fn new(settings: ServerTls, metrics: Arc<Metrics>) -> Result<Arc<Self>, TlsError> {
        let config = server_config(&settings)?;
        Ok(Arc::new(Self {
            settings,
            current: ArcSwap::from_pointee(config),
            metrics,
        }))
    }

    fn paths(&self) -> Vec<PathBuf> {
        let t = &self.settings;
        [&t.cert_file, &t.key_file, &t.client_ca_file]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    fn stamp(&self) -> Stamp {
        self.paths().iter().map(|p| file_stamp(p)).collect()
    }

    /// Re-reads the files; keeps the old config when the new one is bad.
    pub fn reload(&self) -> bool {
        match server_config(&self.settings) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                self.count("ok");
                info!(cert = %self.settings.cert_file, "tls certificates reloaded");
                true
            }
            Err(e) => {
                self.count("error");
                warn!(error = %e, "tls reload failed; keeping the previous certificates");
                false
            }
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .tls_reloads
            .get_or_create(&Outcome { result })
            .inc();
    }

    /// Polls the files every `reload_interval` and reloads on change, until
    /// shutdown reaches [`Phase::Stopped`] (connections draining still
    /// handshake with the newest certificate).
    pub async fn watch(self: Arc<Self>, mut shutdown: Watch) {
        let interval = self.settings.reload_interval.0;
        let mut seen = self.stamp();
        loop {
            tokio::select! {
                () = shutdown.reached(Phase::Stopped) => return,
                () = tokio::time::sleep(interval) => {}
            }
            if self.stamp() != seen {
                // Writers replace cert and key one after the other; a short
                // pause lets both land before reading.
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen = self.stamp();
                self.reload();
            }
        }
    }

    /// The TLS handshake on an accepted connection, with the current
    /// certificates, bounded by [`HANDSHAKE_TIMEOUT`] so a silent client
    /// cannot hold a connection slot.
    pub async fn handshake(&self, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
        let peer = tcp.peer_addr().ok();
        let acceptor = TlsAcceptor::from(self.current.load_full());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                debug!(?peer, error = %e, "tls handshake refused");
                None
            }
            Err(_) => {
                debug!(?peer, "tls handshake timed out");
                None
            }
        }
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
