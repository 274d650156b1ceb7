//! The PostgreSQL store: every SQL statement the relay runs, and the one
//! place that decides whether a database error is worth retrying.
//!
//! Orders are written with an idempotent upsert keyed on `order_id`. A row
//! is only replaced by a *later* version of the order (a larger
//! `source_position`, see [`EventSource::position`]), so redeliveries and
//! out-of-order arrivals leave it untouched and the latest version wins
//! whatever arrives first.
//! Events the relay gives up on go to `dead_letters` with their raw bytes.
//!
//! Retry policy lives in [`StoreError::is_transient`] and
//! [`StoreError::is_poison`], which read SQLSTATE codes, never messages.
//!
//! Connections use TLS when the URL says `sslmode=require` (see `tls`);
//! `ensure_database`, used only by the demo, always connects without TLS.
//!
//! Known shortcomings: versions are ordered by their revision in the
//! order's own stream, which is only meaningful while each order lives in
//! one stream (the decoder requires `orderId` to equal its `order-...`
//! stream's name); `status` is created as `Started` and never changed here.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tracing::debug;
use uuid::Uuid;

use crate::config::PostgresSettings;
use crate::order::Order;

mod tls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating, so that two relays starting at
/// once do not race to create the same tables ("outbox" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f7574626f78;

/// Handle to the database; cheap to share behind an `Arc`.
pub struct Store {
    pool: Pool,
}

/// Where a written order came from, and the key that orders its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    /// The event's own id.
    pub event_id: Uuid,
    /// The stream it was written to (`order-...`).
    pub stream: String,
    /// Its revision in that stream.
    pub revision: u64,
    /// Which version of the order this is: the later one wins. The relay
    /// uses the event's revision in the order's own stream, which stays the
    /// same whether the event arrives live, redelivered, or replayed from
    /// the parked stream (where its place in `$ce-order` is unknown).
    pub position: u64,
}

/// What an upsert did to the order's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The order was new.
    Inserted,
    /// A row from an earlier event was replaced.
    Updated,
    /// The row already came from this event or a later one.
    Unchanged,
}

/// An event the relay gave up on, as it will be recorded.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// The event's own id. With `stream`, the key: recording the same
    /// event again bumps `seen_count`. Ids are unique only per stream.
    pub event_id: Uuid,
    /// The stream it was written to.
    pub stream: &'a str,
    /// Its revision in the subscribed stream.
    pub position: u64,
    /// The event type as delivered.
    pub event_type: &'a str,
    /// Stable reason code, e.g. `missing_field`.
    pub reason: &'a str,
    /// Human-readable specifics.
    pub detail: &'a str,
    /// The content type as delivered.
    pub content_type: &'a str,
    /// The payload, byte for byte.
    pub payload: &'a [u8],
}

/// A few columns of a stored order, for listings.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderSummary {
    /// Business key.
    pub order_id: String,
    /// Who placed it.
    pub customer_id: String,
    /// Fulfilment status.
    pub status: String,
    /// Number of lines.
    pub line_item_count: i32,
    /// Order total.
    pub total: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// When the order was placed.
    pub placed_at: DateTime<Utc>,
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection settings do not parse.
    #[error("invalid connection settings: {0}")]
    Config(#[source] tokio_postgres::Error),
    /// The pool could not be built.
    #[error("cannot build connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    /// No connection could be had from the pool.
    #[error("connection pool: {}", describe_pool(.0))]
    Pool(#[from] PoolError),
    /// A statement failed.
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// Applying the schema migrations failed.
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    /// A stream position does not fit PostgreSQL's `bigint`.
    #[error("{field} {value} does not fit a bigint")]
    OutOfRange {
        /// Which value.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// The target table cannot take the relay's writes.
    #[error("schema: {0}")]
    Schema(String),
    /// TLS was asked for and cannot be set up.
    #[error("tls: {0}")]
    Tls(String),
    /// A database name that is not a plain identifier.
    #[error("invalid database name {0:?}: use letters, digits and _")]
    InvalidDatabaseName(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed: lost or
    /// refused connections, pool timeouts, a server shutting down or out of
    /// resources, serialization failures and deadlocks.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(e) => pool_is_transient(e),
            StoreError::Postgres(e) => pg_is_transient(e),
            StoreError::Migration(e) => migration_cause(e).is_some_and(pg_is_transient),
            _ => false,
        }
    }

    /// Whether the data itself was refused (SQLSTATE classes 22 and 23), so
    /// that the event at fault should be given up rather than retried.
    pub fn is_poison(&self) -> bool {
        match self {
            StoreError::Postgres(e) => pg_is_poison(e),
            StoreError::Pool(PoolError::Backend(e)) => pg_is_poison(e),
            StoreError::OutOfRange { .. } => true,
            _ => false,
        }
    }

    /// The SQLSTATE code, when the server reported one.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            StoreError::Postgres(e) => e.code(),
            StoreError::Pool(PoolError::Backend(e)) => e.code(),
            StoreError::Migration(e) => migration_cause(e)?.code(),
            _ => None,
        }
    }
}

fn pool_is_transient(err: &PoolError) -> bool {
    match err {
        PoolError::Timeout(_) => true,
        PoolError::Backend(e) => pg_is_transient(e),
        _ => false,
    }
}

/// Errors without a SQLSTATE are transient when the connection broke;
/// errors with one are transient only for the classes listed.
fn pg_is_transient(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        Some(code) => code_is_transient(code.code()),
        None => err.is_closed() || caused_by_io(err),
    }
}

fn code_is_transient(code: &str) -> bool {
    const CODES: [&str; 5] = ["57P01", "57P02", "57P03", "40001", "40P01"];
    code.starts_with("08") || code.starts_with("53") || CODES.contains(&code)
}

fn pg_is_poison(err: &tokio_postgres::Error) -> bool {
    err.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Whether an I/O error is anywhere in the cause chain.
fn caused_by_io(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The database error behind a failed migration, if that was the cause.
fn migration_cause(err: &refinery::Error) -> Option<&tokio_postgres::Error> {
    match err.kind() {
        refinery::error::Kind::Connection(_, cause) => cause.downcast_ref(),
        _ => None,
    }
}

/// Adds the SQLSTATE to the message, since operators search by it.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("postgres {}: {db}", db.code().code()),
        None => with_causes(err),
    }
}

/// A pool error with the database error behind it, whose own message
/// ("db error", "error connecting to server") hides the cause.
fn describe_pool(err: &PoolError) -> String {
    match err {
        PoolError::Backend(e) => describe(e),
        other => with_causes(other),
    }
}

/// An error's message followed by each of its causes.
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

impl Store {
    /// Wraps an existing pool.
    pub fn new(pool: Pool) -> Store {
        Store { pool }
    }

    /// Builds a pool for `url` (a `postgres://` URL or `key=value` pairs).
    /// Connections are made lazily, so this fails only on bad settings.
    pub fn connect(
        url: &str,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> Result<Store, StoreError> {
        Self::connect_tls(url, "", pool_size, connect_timeout)
    }

    /// Connects as configured, TLS included (see [`tls`]).
    pub fn from_settings(settings: &PostgresSettings) -> Result<Store, StoreError> {
        Self::connect_tls(
            &settings.url,
            &settings.tls_ca_file,
            settings.pool_size,
            Duration::from_millis(settings.connect_timeout_ms),
        )
    }

    /// As [`Store::connect`], trusting the authorities in `ca_file` too
    /// when the URL says `sslmode=require`.
    pub fn connect_tls(
        url: &str,
        ca_file: &str,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::Config)?;
        config.connect_timeout(connect_timeout);

        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = tls::manager(config, ca_file, recycling)?;
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()?;

        Ok(Store::new(pool))
    }

    /// Applies the embedded migrations, under an advisory lock so that
    /// concurrent starters take turns.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;

        let runner = embedded::migrations::runner();
        let migrated = runner.run_async(&mut **client).await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;

        let report = migrated?;
        unlocked?;
        for migration in report.applied_migrations() {
            debug!(migration = %migration, "migration applied");
        }
        Ok(())
    }

    /// Checks that a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Checks that `order_fulfillment` has the unique index on `order_id`
    /// that the upsert's conflict target needs. Without it every write
    /// would fail, so the relay refuses to start instead.
    pub async fn verify_schema(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let row = client.query_one(SQL_HAS_ORDER_ID_KEY, &[]).await?;
        if !row.get::<_, bool>(0) {
            return Err(StoreError::Schema(
                "order_fulfillment has no unique index on order_id alone; \
                 the upsert needs one (see migrations/)"
                    .into(),
            ));
        }
        if !row.get::<_, bool>(1) {
            return Err(StoreError::Schema(
                "the role in postgres.url may not insert into and update \
                 order_fulfillment and dead_letters"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Writes one order idempotently; see [`Store::upsert_orders`].
    pub async fn upsert_order(
        &self,
        order: &Order,
        source: &EventSource,
    ) -> Result<WriteOutcome, StoreError> {
        let outcomes = self.upsert_orders(&[(order, source.clone())]).await?;
        Ok(outcomes
            .into_iter()
            .next()
            .unwrap_or(WriteOutcome::Unchanged))
    }

    /// Writes a batch in one statement, returning one outcome per input in
    /// input order.
    ///
    /// Within the batch only the latest event of each order is written (an
    /// earlier one reports `Unchanged`, as it would once the later one
    /// landed), and rows are written in `order_id` order so that concurrent
    /// batches lock rows in the same order and cannot deadlock.
    pub async fn upsert_orders(
        &self,
        batch: &[(&Order, EventSource)],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let winners = latest_per_order(batch);
        if winners.is_empty() {
            return Ok(Vec::new());
        }
        let columns = Columns::of(batch, &winners)?;

        let client = self.pool.get().await?;
        let statement = client.prepare_cached(UPSERT_ORDERS).await?;
        let rows = client.query(&statement, &columns.params()).await?;

        let written: BTreeMap<String, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let outcomes = outcomes(batch, &winners, &written);
        debug!(
            rows = batch.len(),
            written = written.len(),
            "orders upserted"
        );
        Ok(outcomes)
    }

    /// Records a poison event; recording the same event again updates the
    /// reason and bumps `last_seen_at` and `seen_count`.
    pub async fn record_dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), StoreError> {
        let position = to_bigint("position", letter.position)?;
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(RECORD_DEAD_LETTER).await?;
        client
            .execute(
                &statement,
                &[
                    &letter.event_id,
                    &storable(letter.stream),
                    &position,
                    &storable(letter.event_type),
                    &storable(letter.reason),
                    &storable(letter.detail),
                    &storable(letter.content_type),
                    &letter.payload,
                ],
            )
            .await?;
        Ok(())
    }

    /// The most recently placed orders, newest first.
    pub async fn list_orders(&self, limit: i64) -> Result<Vec<OrderSummary>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client.query(LIST_ORDERS, &[&limit]).await?;
        let summary = |row: &tokio_postgres::Row| OrderSummary {
            order_id: row.get(0),
            customer_id: row.get(1),
            status: row.get(2),
            line_item_count: row.get(3),
            total: row.get(4),
            currency: row.get(5),
            placed_at: row.get(6),
        };
        Ok(rows.iter().map(summary).collect())
    }

    /// How many orders are stored.
    pub async fn count_orders(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT count(*) FROM order_fulfillment", &[])
            .await?;
        Ok(row.get(0))
    }
}

/// Creates database `name` on the server `url` points at, unless it exists,
/// and returns `url` pointing at it. `CREATE DATABASE` cannot take
/// parameters, so the name is limited to letters, digits and `_`.
pub async fn ensure_database(url: &str, name: &str) -> Result<String, StoreError> {
    if !is_plain_identifier(name) {
        return Err(StoreError::InvalidDatabaseName(name.to_owned()));
    }
    let (client, connection) = admin_connection(url).await?;

    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let created = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await;
        // Someone else creating it first is as good as creating it.
        match created {
            Err(e) if e.code() != Some(&SqlState::DUPLICATE_DATABASE) => return Err(e.into()),
            _ => {}
        }
    }

    drop(client);
    let _ = connection.await;
    Ok(with_database(url, name))
}

/// Drops database `name` (closing its connections) and creates it again
/// empty; returns `url` pointing at it. For the demo, whose own database
/// must not hold a previous run's rows.
pub async fn recreate_database(url: &str, name: &str) -> Result<String, StoreError> {
    if !is_plain_identifier(name) {
        return Err(StoreError::InvalidDatabaseName(name.to_owned()));
    }
    let (client, connection) = admin_connection(url).await?;
    let drop_sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    client.batch_execute(&drop_sql).await?;
    drop(client);
    let _ = connection.await;
    ensure_database(url, name).await
}

/// A plain connection for database administration, with its driver task.
async fn admin_connection(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let config: tokio_postgres::Config = url.parse().map_err(StoreError::Config)?;
    let (client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && name.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `url` with its database replaced by `name`, in either URL form.
fn with_database(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // In key=value form a later key overrides an earlier one.
        return format!("{url} dbname={name}");
    };
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority_start = scheme_end + 3;
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..path_start])
}

/// Text PostgreSQL can store: U+0000 becomes U+FFFD, so that recording a
/// dead letter can never itself be refused.
fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

fn to_bigint(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// Indexes into `batch` of the latest event per order, sorted by order id.
fn latest_per_order(batch: &[(&Order, EventSource)]) -> Vec<usize> {
    let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (order, source)) in batch.iter().enumerate() {
        let slot = latest.entry(order.order_id.as_str()).or_insert(i);
        if source.position > batch[*slot].1.position {
            *slot = i;
        }
    }
    latest.into_values().collect()
}

/// One outcome per input: written rows say what happened; everything else,
/// including events superseded within the batch, was left unchanged.
fn outcomes(
    batch: &[(&Order, EventSource)],
    winners: &[usize],
    written: &BTreeMap<String, bool>,
) -> Vec<WriteOutcome> {
    let mut outcomes = vec![WriteOutcome::Unchanged; batch.len()];
    for &i in winners {
        outcomes[i] = match written.get(&batch[i].0.order_id) {
            Some(true) => WriteOutcome::Inserted,
            Some(false) => WriteOutcome::Updated,
            None => WriteOutcome::Unchanged,
        };
    }
    outcomes
}

/// The batch as one array per column, the shape `UNNEST` takes.
#[derive(Default)]
struct Columns<'a> {
    order_id: Vec<&'a str>,
    customer_id: Vec<&'a str>,
    checkout_of_cart: Vec<Option<&'a str>>,
    currency: Vec<&'a str>,
    subtotal: Vec<Decimal>,
    tax: Vec<Decimal>,
    total: Vec<Decimal>,
    line_items: Vec<Value>,
    line_item_count: Vec<i32>,
    shipping: Vec<&'a Value>,
    billing: Vec<&'a Value>,
    extra: Vec<Value>,
    placed_at: Vec<DateTime<Utc>>,
    event_id: Vec<Uuid>,
    stream: Vec<&'a str>,
    revision: Vec<i64>,
    position: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a [(&'a Order, EventSource)], rows: &[usize]) -> Result<Self, StoreError> {
        let mut c = Columns::default();
        for &i in rows {
            let (order, source) = &batch[i];
            c.push_order(order);
            c.event_id.push(source.event_id);
            c.stream.push(&source.stream);
            c.revision.push(to_bigint("revision", source.revision)?);
            c.position.push(to_bigint("position", source.position)?);
        }
        Ok(c)
    }

    fn push_order(&mut self, order: &'a Order) {
        let count = i32::try_from(order.line_items.len()).unwrap_or(i32::MAX);
        let items = serde_json::to_value(&order.line_items).unwrap_or(Value::Null);
        self.order_id.push(&order.order_id);
        self.customer_id.push(&order.customer_id);
        self.checkout_of_cart
            .push(order.checkout_of_cart.as_deref());
        self.currency.push(&order.currency);
        self.subtotal.push(order.subtotal);
        self.tax.push(order.tax);
        self.total.push(order.total);
        self.line_items.push(items);
        self.line_item_count.push(count);
        self.shipping.push(&order.shipping);
        self.billing.push(&order.billing);
        self.extra.push(Value::Object(order.extra.clone()));
        self.placed_at.push(order.placed_at);
    }

    /// The parameters, in the order `UPSERT_ORDERS` numbers them.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 17] {
        [
            &self.order_id,
            &self.customer_id,
            &self.checkout_of_cart,
            &self.currency,
            &self.subtotal,
            &self.tax,
            &self.total,
            &self.line_items,
            &self.line_item_count,
            &self.shipping,
            &self.billing,
            &self.extra,
            &self.placed_at,
            &self.event_id,
            &self.stream,
            &self.revision,
            &self.position,
        ]
    }
}

/// Whether `order_fulfillment` (as the search path finds it) has a unique
/// index on exactly `order_id`, and whether the role may write both tables.
/// A missing table fails with 42P01.
const SQL_HAS_ORDER_ID_KEY: &str = "
    SELECT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_attribute a
          ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'order_fulfillment'::regclass
          AND i.indisunique
          AND i.indnatts = 1
          AND a.attname = 'order_id'
    ), has_table_privilege('order_fulfillment', 'INSERT, UPDATE')
       AND has_table_privilege('dead_letters', 'INSERT, UPDATE')";

/// Inserts each order, or replaces its row if this event came later in the
/// subscribed stream. `status` and `created_at` are never overwritten.
/// `xmax = 0` holds only for a row this statement inserted.
const UPSERT_ORDERS: &str = "
INSERT INTO order_fulfillment AS o (
    order_id, customer_id, checkout_of_cart, currency,
    subtotal, tax, total, line_items, line_item_count,
    shipping, billing, extra, placed_at,
    source_event_id, source_stream, source_revision, source_position)
SELECT * FROM UNNEST(
    $1::text[], $2::text[], $3::text[], $4::text[],
    $5::numeric[], $6::numeric[], $7::numeric[], $8::jsonb[], $9::int4[],
    $10::jsonb[], $11::jsonb[], $12::jsonb[], $13::timestamptz[],
    $14::uuid[], $15::text[], $16::int8[], $17::int8[]
) AS b(order_id)
ORDER BY b.order_id
ON CONFLICT (order_id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id,
    checkout_of_cart = EXCLUDED.checkout_of_cart,
    currency = EXCLUDED.currency,
    subtotal = EXCLUDED.subtotal,
    tax = EXCLUDED.tax,
    total = EXCLUDED.total,
    line_items = EXCLUDED.line_items,
    line_item_count = EXCLUDED.line_item_count,
    shipping = EXCLUDED.shipping,
    billing = EXCLUDED.billing,
    extra = EXCLUDED.extra,
    placed_at = EXCLUDED.placed_at,
    source_event_id = EXCLUDED.source_event_id,
    source_stream = EXCLUDED.source_stream,
    source_revision = EXCLUDED.source_revision,
    source_position = EXCLUDED.source_position,
    updated_at = now()
WHERE o.source_position < EXCLUDED.source_position
RETURNING o.order_id, (o.xmax = 0) AS inserted";

const RECORD_DEAD_LETTER: &str = "
INSERT INTO dead_letters AS d (
    event_id, stream, position, event_type,
    reason, detail, content_type, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (event_id, stream) DO UPDATE SET
    reason = EXCLUDED.reason,
    detail = EXCLUDED.detail,
    last_seen_at = now(),
    seen_count = d.seen_count + 1";

const LIST_ORDERS: &str = "
SELECT order_id, customer_id, status, line_item_count,
       total, currency::text, placed_at
FROM order_fulfillment
ORDER BY placed_at DESC, order_id
LIMIT $1";

#[cfg(test)]
mod tests {
    use super::*;

    /// The database in a URL is replaced in both connection-string forms.
    #[test]
    fn database_is_replaced_in_either_url_form() {
        let cases = [
            (
                "postgres://u:p@h:5432/postgres",
                "postgres://u:p@h:5432/demo",
            ),
            ("postgres://h", "postgres://h/demo"),
            (
                "postgres://h/db?sslmode=disable",
                "postgres://h/demo?sslmode=disable",
            ),
            ("host=h user=u", "host=h user=u dbname=demo"),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "demo"), expected);
        }
    }

    /// Only plain identifiers are accepted as database names.
    #[test]
    fn database_names_must_be_plain_identifiers() {
        assert!(is_plain_identifier("outbox_demo1"));
        for bad in ["", "1db", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert!(!is_plain_identifier(bad), "{bad:?}");
        }
    }

    /// SQLSTATE classes decide transience, not messages.
    #[test]
    fn transient_codes_are_recognised() {
        for code in [
            "08006", "08001", "53300", "57P01", "57P03", "40001", "40P01",
        ] {
            assert!(code_is_transient(code), "{code}");
        }
        for code in ["22021", "23505", "42P01", "57014", "28P01"] {
            assert!(!code_is_transient(code), "{code}");
        }
    }
}
