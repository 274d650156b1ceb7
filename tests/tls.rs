//! TLS to PostgreSQL: a PostgreSQL server of the test's own (a fresh
//! `initdb` in a temporary directory, on a free port, accepting TLS
//! connections only) with a certificate from a throw-away authority.
//!
//! The shared server at 127.0.0.1:5432 is not touched. Needs the server's
//! `initdb` and `pg_ctl` (from Debian's `postgresql` package, which
//! `.ci/run` installs, or on the PATH) and, when run as root, a `postgres`
//! user to run them as.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outbox_relay::store::Store;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A PostgreSQL server that accepts only TLS connections; stopped on drop.
struct TlsServer {
    dir: tempfile::TempDir,
    port: u16,
    ca_file: PathBuf,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        give_to_postgres(dir.path());
        as_postgres(&["initdb", "-D", path(&data), "-U", "postgres", "-A", "trust"]);

        let ca_file = dir.path().join("ca.pem");
        write_certificates(&data, &ca_file);
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        give_to_postgres(dir.path());

        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key",
            path(dir.path())
        );
        let log = dir.path().join("postgres.log");
        as_postgres(&[
            "pg_ctl",
            "-D",
            path(&data),
            "-l",
            path(&log),
            "-o",
            &options,
            "-w",
            "start",
        ]);
        TlsServer { dir, port, ca_file }
    }

    fn url(&self, sslmode: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        as_postgres(&["pg_ctl", "-D", path(&data), "-m", "immediate", "stop"]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A server tool: Debian keeps them in /usr/lib/postgresql/<version>/bin,
/// off the PATH; elsewhere they are on it.
fn pg_tool(name: &str) -> String {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort_by_key(|p| {
        let version = p.iter().nth(4).and_then(|v| v.to_str()?.parse().ok());
        version.unwrap_or(0u32)
    });
    found
        .pop()
        .map_or(name.to_string(), |p| p.to_str().unwrap().to_string())
}

/// PostgreSQL refuses to run as root, so its tools run as `postgres` then.
fn as_postgres(args: &[&str]) {
    let tool = pg_tool(args[0]);
    let args: Vec<&str> = std::iter::once(tool.as_str())
        .chain(args[1..].iter().copied())
        .collect();
    let mut command = match is_root() {
        true => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(&args);
            c
        }
        false => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let out = command.output().expect("initdb and pg_ctl installed");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn give_to_postgres(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres", path(dir)])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A certificate authority (written to `ca_file`) and a server certificate
/// for localhost signed by it (written into the data directory).
fn write_certificates(data: &Path, ca_file: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(ca_file, ca.pem()).unwrap();

    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(data.join("server.pem"), cert.pem()).unwrap();
    let key_file = data.join("server.key");
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn ping(url: &str, ca_file: &str) -> Result<(), String> {
    let store =
        Store::connect_tls(url, ca_file, 1, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    store.ping().await.map_err(|e| chain(&e))
}

/// An error with all its causes, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text += &format!(": {e}");
        cause = e.source();
    }
    text
}

/// With `sslmode=require` and the authority in `tls_ca_file`, the store
/// connects to a server that accepts nothing but TLS.
#[tokio::test]
async fn sslmode_require_connects_over_tls_to_a_trusted_server() {
    let server = TlsServer::start();
    let ca = server.ca_file.to_str().unwrap();

    let tls = ping(&server.url("require"), ca).await;
    let plain = ping(&server.url("disable"), ca).await;

    assert_eq!(tls, Ok(()));
    assert!(plain.is_err(), "the server refuses plain connections");
}

/// A certificate from an authority the relay does not trust is refused.
#[tokio::test]
async fn sslmode_require_refuses_an_untrusted_certificate() {
    let server = TlsServer::start();

    let result = ping(&server.url("require"), "").await;

    let error = result.expect_err("an unknown authority is refused");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}
