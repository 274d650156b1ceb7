//! The benchmark's own databases on the local PostgreSQL, and the facts
//! about that server that the report states.
//!
//! Each phase writes into a fresh database, so no phase pays for the
//! rows of another; all are named `relay_bench_<random>_<phase>` and are
//! dropped when the run ends, whether it succeeded or not.

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, NoTls};

/// Opens a connection to `url`, driving it on a task of its own.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The databases of one run.
pub struct Databases {
    /// The server's URL with its maintenance database, for CREATE/DROP.
    admin_url: String,
    /// `relay_bench_<random>`; each phase appends its own suffix.
    prefix: String,
    created: Vec<String>,
}

impl Databases {
    /// Databases on the server `base_url` points at (any database in the
    /// URL is replaced).
    pub fn new(base_url: &str) -> Databases {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Databases {
            admin_url: with_database(base_url, "postgres"),
            prefix: format!("relay_bench_{}", &random[..12]),
            created: Vec::new(),
        }
    }

    /// Creates the database for `phase` and returns its URL.
    pub async fn create(&mut self, phase: &str) -> Result<String> {
        let name = format!("{}_{phase}", self.prefix);
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("not a plain database name: {name}");
        }
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        self.created.push(name.clone());
        Ok(with_database(&self.admin_url, &name))
    }

    /// Drops every database this run created.
    pub async fn drop_all(&mut self) -> Result<()> {
        let admin = connect(&self.admin_url).await?;
        for name in self.created.drain(..) {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            admin.batch_execute(&sql).await.context(sql)?;
        }
        Ok(())
    }
}

/// What the report says about the PostgreSQL server.
pub struct ServerFacts {
    /// `SHOW server_version`.
    pub version: String,
    /// `SHOW fsync`.
    pub fsync: String,
    /// `SHOW synchronous_commit`.
    pub synchronous_commit: String,
}

/// Asks the server for its version and durability settings.
pub async fn server_facts(base_url: &str) -> Result<ServerFacts> {
    let client = connect(&with_database(base_url, "postgres")).await?;
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };
    Ok(ServerFacts {
        version: show("server_version").await?,
        fsync: show("fsync").await?,
        synchronous_commit: show("synchronous_commit").await?,
    })
}

/// Asks the server to write out every dirty page now (superuser only),
/// so that the bulk writes of one phase are not flushed during the next.
/// Returns whether it did.
pub async fn checkpoint(url: &str) -> bool {
    match connect(url).await {
        Ok(client) => client.batch_execute("CHECKPOINT").await.is_ok(),
        Err(_) => false,
    }
}

/// Rows in `order_fulfillment`, counted exactly.
pub async fn count_orders(client: &Client) -> Result<i64> {
    let row = client
        .query_one("SELECT count(*) FROM order_fulfillment", &[])
        .await?;
    Ok(row.get(0))
}

/// `url` (a `postgres://` URL) with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    format!("{}/{name}{query}", &base[..path])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database in a URL is replaced, with or without one given.
    #[test]
    fn database_is_replaced_in_the_url() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/x?sslmode=disable",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "x"), expected);
        }
    }
}
