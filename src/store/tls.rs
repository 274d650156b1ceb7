//! TLS to PostgreSQL, chosen by the `sslmode` in the connection URL.
//!
//! `sslmode=require` connects over TLS and verifies the server's
//! certificate and host name against the system's certificate authorities
//! plus those in `postgres.tls_ca_file`. `disable` and `prefer` connect
//! without TLS: the relay never makes an unverified TLS connection and never
//! falls back silently from TLS to plain text, so `prefer` (tokio-postgres's
//! default when the URL says nothing) means plain text. libpq's
//! `verify-ca`/`verify-full` are not understood by the driver; `require`
//! here already verifies as `verify-full` does.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// A connection manager that speaks TLS when the URL requires it.
pub(super) fn manager(
    config: tokio_postgres::Config,
    ca_file: &str,
    recycling: ManagerConfig,
) -> Result<Manager, StoreError> {
    if config.get_ssl_mode() != SslMode::Require {
        return Ok(Manager::from_config(config, NoTls, recycling));
    }
    let tls = MakeRustlsConnect::new(client_config(ca_file)?);
    Ok(Manager::from_config(config, tls, recycling))
}

fn client_config(ca_file: &str) -> Result<rustls::ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    Ok(config)
}

/// The system's certificate authorities, plus those in `ca_file`.
fn roots(ca_file: &str) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();

    // Unreadable system certificates are skipped: `ca_file` may be all
    // that is needed, and a missing authority shows up as a clear
    // verification error when connecting.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);

    if ca_file.is_empty() {
        return Ok(roots);
    }
    let pem = std::fs::read(ca_file)
        .map_err(|e| StoreError::Tls(format!("postgres.tls_ca_file {ca_file}: {e}")))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| StoreError::Tls(format!("{ca_file}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| StoreError::Tls(format!("{ca_file}: {e}")))?;
        added += 1;
    }
    if added == 0 {
        let reason = format!("postgres.tls_ca_file {ca_file} holds no certificate");
        return Err(StoreError::Tls(reason));
    }
    Ok(roots)
}
