//! TLS for the replication connection (rustls), configured as libpq configures OpenSSL
//! (`initialize_SSL` in fe-secure-openssl.c):
//!
//! - Root certificates: `sslrootcert` (default `~/.postgresql/root.crt`). When the file
//!   exists the chain is checked in every sslmode that uses TLS — with `require` (or
//!   `prefer`/`allow`) libpq then behaves as `verify-ca`; when it does not exist,
//!   `verify-ca`/`verify-full` fail and the other modes encrypt without checking.
//!   `sslrootcert=system` takes the system's trusted roots (OpenSSL's default file).
//! - `verify-full` also matches the host name against the certificate's subject alternative
//!   names (DNS names, or IP addresses for a numeric host). Unlike OpenSSL-based libpq,
//!   webpki does not fall back to the common name when there is no DNS name.
//! - `sslcrl` (default `~/.postgresql/root.crl`), when it exists and roots are in use:
//!   revoked certificates are refused, for the whole chain (libpq: `X509_V_FLAG_CRL_CHECK_ALL`).
//! - A client certificate `sslcert` (default `~/.postgresql/postgresql.crt`) is sent when
//!   the file exists, with the key `sslkey` (default `~/.postgresql/postgresql.key`), which
//!   must not be accessible to group or others (0600; 0640 when owned by root), as in libpq.
//!
//! [`end_point_hash`] is RFC 5929's `tls-server-end-point` channel binding data for SCRAM.

use super::conninfo::{ConnInfo, RootCert, SslMode};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where OpenSSL (and so PostgreSQL 16's `sslrootcert=system`) finds the system's roots on
/// Debian; `SSL_CERT_FILE` overrides it, as for OpenSSL.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why TLS could not be set up: the configuration, never the network (retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error(
        "root certificate file \"{}\" does not exist: sslmode={mode} checks the server's certificate against it (provide the CA certificate there or with sslrootcert=, use sslrootcert=system, or choose sslmode=require to encrypt without checking)",
        .path.display()
    )]
    NoRootCert { path: PathBuf, mode: &'static str },
    #[error(
        "sslmode={0} needs a root certificate, but there is no home directory for ~/.postgresql/root.crt (give sslrootcert=)"
    )]
    NoHome(&'static str),
    #[error("cannot read {what} \"{}\": {reason}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("certificate present, but not private key file \"{}\" (give sslkey=)", .0.display())]
    NoKey(PathBuf),
    #[error(
        "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or u=rw,g=r (0640) or less if owned by root",
        .0.display()
    )]
    KeyPermissions(PathBuf),
    #[error("private key file \"{}\" is not a regular file", .0.display())]
    KeyNotAFile(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A TLS client configuration for one connection target, and the name its certificate is
/// checked against.
pub(crate) struct TlsSetup {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsSetupError {
    let path = path.to_path_buf();
    move |e| TlsSetupError::Read {
        what,
        path,
        reason: e.to_string(),
    }
}

/// The PEM certificates of a file (at least one).
fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err(what, path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(what, path))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Read {
            what,
            path: path.to_path_buf(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// libpq's check of the key file (fe-secure-openssl.c): owned by us, no group or other
/// access at all; owned by root, at most group read (system-wide keys shared by a group).
fn check_key_file(path: &Path) -> Result<(), TlsSetupError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Err(TlsSetupError::NoKey(path.to_path_buf())),
    };
    if !meta.is_file() {
        return Err(TlsSetupError::KeyNotAFile(path.to_path_buf()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mode = meta.mode();
    if (meta.uid() == euid && mode & 0o077 != 0) || (meta.uid() == 0 && mode & 0o137 != 0) {
        return Err(TlsSetupError::KeyPermissions(path.to_path_buf()));
    }
    Ok(())
}

/// Does `path` exist (libpq decides with stat() whether to use a default file)?
fn exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Builds the TLS configuration `info` asks for.
pub(crate) fn setup(info: &ConnInfo, host_name: &str) -> Result<TlsSetup, TlsSetupError> {
    let provider = provider();
    let mode = info.sslmode;
    // Root certificates: a file that exists, or the system's; none otherwise.
    let roots_file = match &info.sslrootcert {
        Some(RootCert::System) => Some(
            std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS)),
        ),
        Some(RootCert::File(p)) if exists(p) => Some(p.clone()),
        Some(RootCert::File(p)) if mode.verifies() => {
            return Err(TlsSetupError::NoRootCert {
                path: p.clone(),
                mode: mode.as_str(),
            });
        }
        None if mode.verifies() => return Err(TlsSetupError::NoHome(mode.as_str())),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots_file {
        None => Arc::new(NoCheck {
            provider: Arc::clone(&provider),
        }),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(&path, "root certificate file")? {
                roots.add(c).map_err(|e| TlsSetupError::Read {
                    what: "root certificate file",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let mut builder =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if let Some(crl) = info.sslcrl.as_ref().filter(|p| exists(p)) {
                let crls = CertificateRevocationListDer::pem_file_iter(crl)
                    .map_err(read_err("certificate revocation list", crl))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(read_err("certificate revocation list", crl))?;
                builder = builder.with_crls(crls);
            }
            let webpki = builder
                .build()
                .map_err(|e| TlsSetupError::Config(e.to_string()))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { webpki })
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // A client certificate when its file exists (libpq sends none otherwise).
    let config = match info.sslcert.as_ref().filter(|p| exists(p)) {
        None => builder.with_no_client_auth(),
        Some(cert_path) => {
            let certs = load_certs(cert_path, "client certificate file")?;
            let key_path = info.sslkey.clone().ok_or_else(|| {
                TlsSetupError::NoKey(PathBuf::from("~/.postgresql/postgresql.key"))
            })?;
            check_key_file(&key_path)?;
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsSetupError::Read {
                what: "private key file",
                path: key_path.clone(),
                // The parser's messages name the section kind, never key material.
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsSetupError::Read {
                    what: "client certificate and key",
                    path: key_path.clone(),
                    reason: e.to_string(),
                })?
        }
    };
    let server_name = match host_name.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host_name.to_string()).map_err(|_| {
            TlsSetupError::Config(format!(
                "host {host_name:?} is neither a DNS name nor an IP address"
            ))
        })?,
    };
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
    })
}

/// `verify-ca` (and `require` with a root certificate): the chain must lead to a root,
/// any host name is accepted. webpki checks the chain before the name, so a name mismatch
/// is only ever reported for a chain that was good.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `require`/`prefer`/`allow` without a root certificate: encryption without knowing who is
/// at the other end (libpq's `SSL_VERIFY_NONE`). The handshake signature is still checked,
/// so the key of the certificate presented is the one used.
#[derive(Debug)]
struct NoCheck {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCheck {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// RFC 5929 `tls-server-end-point`: the hash of the server's certificate, with the hash
/// function of the certificate's signature algorithm, SHA-256 when that is MD5 or SHA-1
/// (as PostgreSQL's `be_tls_get_certificate_hash` computes it on the server side). Err for
/// a signature algorithm with no single hash function (RSASSA-PSS, EdDSA): PostgreSQL
/// cannot bind to those either.
pub(crate) fn end_point_hash(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use sha2::Digest;
    use x509_cert::der::Decode;
    use x509_cert::der::oid::ObjectIdentifier as Oid;
    const SHA1_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
    const MD5_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.4");
    const SHA256_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    const SHA384_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    const SHA512_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    const SHA224_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.14");
    const SHA1_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.1");
    const SHA224_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.1");
    const SHA256_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    const SHA384_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    const SHA512_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
    const SHA1_DSA: Oid = Oid::new_unwrap("1.2.840.10040.4.3");
    const SHA224_DSA: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.3.1");
    const SHA256_DSA: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.3.2");
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| format!("cannot parse the server certificate: {e}"))?;
    let oid = cert.signature_algorithm.oid;
    Ok(match oid {
        MD5_RSA | SHA1_RSA | SHA1_ECDSA | SHA1_DSA | SHA256_RSA | SHA256_ECDSA | SHA256_DSA => {
            sha2::Sha256::digest(cert_der).to_vec()
        }
        SHA224_RSA | SHA224_ECDSA | SHA224_DSA => sha2::Sha224::digest(cert_der).to_vec(),
        SHA384_RSA | SHA384_ECDSA => sha2::Sha384::digest(cert_der).to_vec(),
        SHA512_RSA | SHA512_ECDSA => sha2::Sha512::digest(cert_der).to_vec(),
        other => {
            return Err(format!(
                "the server certificate's signature algorithm {other} has no hash function for tls-server-end-point channel binding"
            ));
        }
    })
}
