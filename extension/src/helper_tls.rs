//! TLS towards a redo helper that is not on loopback (rustls, ring provider): the server's
//! certificate must chain to `fpw_pushdown.helper_ca_file` and name the host of
//! `fpw_pushdown.helper_address` (a DNS name or an IP address SAN), as libpq's
//! `sslmode=verify-full`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// A TLS stream over `tcp`; the handshake runs with the first write.
pub fn connect(
    tcp: TcpStream,
    ca_file: &Path,
    host: &str,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let ca_err = |e: &dyn std::fmt::Display| {
        format!("fpw_pushdown.helper_ca_file {}: {e}", ca_file.display())
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| ca_err(&e))? {
        roots
            .add(cert.map_err(|e| ca_err(&e))?)
            .map_err(|e| ca_err(&e))?;
    }
    if roots.is_empty() {
        return Err(ca_err(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(StreamOwned::new(conn, tcp))
}
