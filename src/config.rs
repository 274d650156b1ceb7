//! The relay's settings: what it connects to, which group it joins and how
//! it treats failures.
//!
//! Settings are layered, each layer overriding the one before: the defaults
//! written here, then an optional TOML file, then environment variables named
//! `OUTBOX_RELAY__<SECTION>__<KEY>` (for example
//! `OUTBOX_RELAY__POSTGRES__URL`). Unknown keys are rejected so that a typo
//! fails at start-up instead of being silently ignored.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "OUTBOX_RELAY";

/// Separator between prefix, section and key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Everything the relay can be told.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where events come from.
    pub kurrentdb: KurrentDbSettings,
    /// Where orders go.
    pub postgres: PostgresSettings,
    /// How events are handled between the two.
    pub relay: RelaySettings,
    /// How the relay reports what it does.
    pub log: LogSettings,
    /// The metrics and health endpoint.
    pub http: HttpSettings,
}

/// The KurrentDB side: the connection and the consumer group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KurrentDbSettings {
    /// Connection string in KurrentDB's URL format. May carry credentials;
    /// it is masked whenever settings are printed.
    pub connection_string: String,
    /// The stream the consumer group reads, usually a category stream.
    pub stream: String,
    /// The consumer group's name. Relays sharing a name share the load.
    pub group: String,
    /// Create the group at start-up when it does not exist.
    pub create_group: bool,
    /// Where a newly created group starts: "start", "end" or a revision.
    pub start_from: String,
    /// Deliver the events that category-stream links point to.
    pub resolve_links: bool,
    /// Events the server may have in flight to this relay at once.
    pub buffer_size: usize,
    /// Group setting: how long the server waits for an ack before it
    /// redelivers an event (counting a retry).
    pub message_timeout_ms: u64,
    /// Group setting: deliveries after the first before the server parks an
    /// event.
    pub max_retry_count: i32,
    /// Group setting: live events the server buffers for the group.
    pub live_buffer_size: i32,
    /// Group setting: events the server reads at a time from history.
    pub read_batch_size: i32,
    /// Group setting: events the server caches when reading history. Must be
    /// larger than `read_batch_size`.
    pub history_buffer_size: i32,
    /// Group setting: how often, at most, the server writes a checkpoint.
    pub checkpoint_after_ms: u64,
    /// Only events of this type are written; others are acked and ignored.
    pub event_type: String,
    /// How long the relay keeps trying to reach KurrentDB at start-up before
    /// it gives up with an error (0: forever). Once it has subscribed, it
    /// retries forever.
    pub startup_timeout_ms: u64,
    /// First wait before reconnecting after the subscription drops.
    pub reconnect_initial_ms: u64,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_ms: u64,
}

impl Default for KurrentDbSettings {
    fn default() -> Self {
        Self {
            connection_string: "kurrentdb://127.0.0.1:2113?tls=false".into(),
            stream: "$ce-order".into(),
            group: "fulfillment".into(),
            create_group: true,
            start_from: "start".into(),
            resolve_links: true,
            buffer_size: 2048,
            message_timeout_ms: 30_000,
            max_retry_count: 10,
            live_buffer_size: 1000,
            read_batch_size: 100,
            history_buffer_size: 1000,
            checkpoint_after_ms: 2_000,
            event_type: "order-placed".into(),
            startup_timeout_ms: 60_000,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 10_000,
        }
    }
}

/// The PostgreSQL side.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// libpq-style URL. May carry a password; masked whenever printed.
    pub url: String,
    /// Connections kept in the pool.
    pub pool_size: usize,
    /// How long to wait for a connection before counting PostgreSQL as down.
    pub connect_timeout_ms: u64,
    /// Apply the SQL in `migrations/` at start-up.
    pub migrate: bool,
    /// A PEM file of certificate authorities trusted for TLS, in addition
    /// to the system's. Used only with `sslmode=require` in `url`; empty
    /// for none.
    pub tls_ca_file: String,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            pool_size: 4,
            connect_timeout_ms: 5_000,
            migrate: true,
            tls_ca_file: String::new(),
        }
    }
}

/// What the relay does with an event it must give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoisonAction {
    /// Nack with Skip: the server drops the event.
    Skip,
    /// Nack with Park: the server keeps it in the group's parked stream,
    /// from where it can be replayed.
    Park,
}

/// How events are handled between KurrentDB and PostgreSQL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// What happens to events that can never be written.
    pub poison_action: PoisonAction,
    /// Payloads larger than this are poison.
    pub max_event_bytes: usize,
    /// Most events written in one transaction.
    pub batch_size: usize,
    /// Batches written at the same time, each on its own connection. Two
    /// let one batch be gathered and decoded while another is written.
    pub writers: usize,
    /// How long a batch waits for more events before it is written.
    pub linger_ms: u64,
    /// How long a transient write failure is retried in place before the
    /// events are handed back to the server with a Nack Retry.
    pub write_retry_ms: u64,
    /// How long a graceful stop may take before in-flight events are
    /// abandoned (the server redelivers them).
    pub shutdown_timeout_ms: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            poison_action: PoisonAction::Skip,
            max_event_bytes: 1024 * 1024,
            batch_size: 128,
            writers: 2,
            linger_ms: 5,
            write_retry_ms: 10_000,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How the relay logs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `outbox_relay=debug,info`.
    /// `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The HTTP endpoint serving `/metrics`, `/health/live` and
/// `/health/ready`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// The address to listen on, `host:port`; port 0 picks a free one
    /// (the chosen address is logged).
    pub listen: String,
    /// How often the lag behind the subscribed stream's last event is
    /// measured (one small read from KurrentDB each time).
    pub lag_poll_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "0.0.0.0:9187".into(),
            lag_poll_ms: 5_000,
        }
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file, variable or value could not be read or had the wrong form.
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// The values were read but do not make sense together.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// The setting at fault, as `section.key`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly so tests
    /// do not depend on the process environment.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            let source = config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true);
            builder = builder.add_source(source);
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(Some(env));
        let settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kurrentdb;
        if k.stream.is_empty() {
            return invalid("kurrentdb.stream", "must not be empty");
        }
        if k.group.is_empty() {
            return invalid("kurrentdb.group", "must not be empty");
        }
        if let Err(reason) = parse_start_from(&k.start_from) {
            return invalid("kurrentdb.start_from", &reason);
        }
        let links = k.stream.starts_with("$ce-") || k.stream.starts_with("$et-");
        if links && !k.resolve_links {
            return invalid(
                "kurrentdb.resolve_links",
                "must be true for a $ce- or $et- stream, which holds only links",
            );
        }
        if k.buffer_size == 0 {
            return invalid("kurrentdb.buffer_size", "must be at least 1");
        }
        if k.max_retry_count < 0 {
            return invalid("kurrentdb.max_retry_count", "must not be negative");
        }
        if k.read_batch_size < 1 || k.read_batch_size >= k.history_buffer_size {
            return invalid(
                "kurrentdb.read_batch_size",
                "must be at least 1 and below kurrentdb.history_buffer_size",
            );
        }
        if k.live_buffer_size < 1 {
            return invalid("kurrentdb.live_buffer_size", "must be at least 1");
        }
        if self.postgres.connect_timeout_ms == 0 {
            return invalid("postgres.connect_timeout_ms", "must be at least 1");
        }
        if k.message_timeout_ms == 0 {
            return invalid("kurrentdb.message_timeout_ms", "must be at least 1");
        }
        if self.relay.shutdown_timeout_ms == 0 {
            return invalid("relay.shutdown_timeout_ms", "must be at least 1");
        }
        if self.relay.max_event_bytes == 0 {
            return invalid("relay.max_event_bytes", "must be at least 1");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid("log.level", "is not a valid tracing filter");
        }
        if self.postgres.pool_size == 0 {
            return invalid("postgres.pool_size", "must be at least 1");
        }
        if self.relay.writers == 0 {
            return invalid("relay.writers", "must be at least 1");
        }
        if self.relay.batch_size == 0 {
            return invalid("relay.batch_size", "must be at least 1");
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("http.listen", "must be an address like 0.0.0.0:9187");
        }
        if self.http.lag_poll_ms == 0 {
            return invalid("http.lag_poll_ms", "must be at least 1");
        }
        Ok(())
    }

    /// The settings as TOML, with passwords in connection strings masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.kurrentdb.connection_string = mask_url(&masked.kurrentdb.connection_string);
        masked.postgres.url = mask_url(&masked.postgres.url);
        toml::to_string_pretty(&masked).unwrap_or_default()
    }
}

fn invalid(key: &'static str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        reason: reason.to_string(),
    })
}

/// Where a newly created group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first event of the stream.
    Start,
    /// Only events written after the group is created.
    End,
    /// The event at this revision.
    Revision(u64),
}

/// Parses `start`, `end` or a revision number.
pub fn parse_start_from(text: &str) -> Result<StartFrom, String> {
    match text.trim() {
        "start" => Ok(StartFrom::Start),
        "end" => Ok(StartFrom::End),
        other => other
            .parse()
            .map(StartFrom::Revision)
            .map_err(|_| format!("expected \"start\", \"end\" or a revision, got {other:?}")),
    }
}

impl KurrentDbSettings {
    /// Where a new group starts; validated at load time.
    pub fn start_position(&self) -> StartFrom {
        parse_start_from(&self.start_from).unwrap_or(StartFrom::Start)
    }

    /// How long the server waits for an ack.
    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }
}

/// Replaces every password in a connection string with `****`: the one in
/// `scheme://user:password@host`, a `password=` query parameter, and a libpq
/// key/value `password = value` (quoted or not). Anything else is kept.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return mask_key_values(url, ' ');
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let (before_query, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let authority = match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host) = before_query.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:****{host}"),
                None => before_query.to_string(),
            }
        }
        None => before_query.to_string(),
    };
    format!("{scheme}{authority}{}", mask_key_values(query, '&'))
}

/// Masks the value after each `password` key in `key=value` pairs that are
/// separated by `separator` (a space in libpq strings, `&` in queries).
fn mask_key_values(text: &str, separator: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = find_password_key(rest, separator) {
        out.push_str(&rest[..found.value_start]);
        out.push_str("****");
        rest = &rest[found.value_end..];
    }
    out.push_str(rest);
    out
}

struct PasswordValue {
    value_start: usize,
    value_end: usize,
}

/// Finds the next `password [=] value`, allowing spaces around `=` and a
/// single-quoted value with `\'` escapes.
fn find_password_key(text: &str, separator: char) -> Option<PasswordValue> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let start = from + i;
        let at_boundary = start == 0
            || matches!(text[..start].chars().last(), Some(c) if c == separator
                || c == '?' || c.is_whitespace());
        let after = &text[start + "password".len()..];
        let trimmed = after.trim_start();
        if at_boundary && trimmed.starts_with('=') {
            let value = trimmed[1..].trim_start_matches(' ');
            let value_start = text.len() - value.len();
            let len = value_len(value, separator);
            return Some(PasswordValue {
                value_start,
                value_end: value_start + len,
            });
        }
        from = start + 1;
    }
    None
}

fn value_len(value: &str, separator: char) -> usize {
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => return i + 2,
                _ => escaped = false,
            }
        }
        return value.len();
    }
    value
        .find(|c: char| c == separator || c.is_whitespace())
        .unwrap_or(value.len())
}

/// A URL that prints masked, for log fields.
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_url(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_name_the_tutorial_group() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.kurrentdb.stream, "$ce-order");
        assert_eq!(s.kurrentdb.group, "fulfillment");
        assert!(s.kurrentdb.resolve_links);
        assert_eq!(s.relay.poison_action, PoisonAction::Skip);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = Settings::load_from(
            None,
            env(&[
                ("OUTBOX_RELAY__KURRENTDB__GROUP", "billing"),
                ("OUTBOX_RELAY__KURRENTDB__BUFFER_SIZE", "7"),
                ("OUTBOX_RELAY__RELAY__POISON_ACTION", "park"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kurrentdb.group, "billing");
        assert_eq!(s.kurrentdb.buffer_size, 7);
        assert_eq!(s.relay.poison_action, PoisonAction::Park);
    }

    #[test]
    fn unknown_environment_keys_are_rejected() {
        let err = Settings::load_from(
            None,
            env(&[("OUTBOX_RELAY__POSTGRES__URLL", "postgres://x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn example_file_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/outbox-relay.example.toml");
        let loaded = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(
            loaded.to_masked_toml(),
            Settings::default().to_masked_toml()
        );
    }

    #[test]
    fn read_batch_must_be_below_history_buffer() {
        let err = Settings::load_from(
            None,
            env(&[("OUTBOX_RELAY__KURRENTDB__READ_BATCH_SIZE", "1000")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("kurrentdb.read_batch_size"));
    }

    #[test]
    fn start_from_accepts_start_end_and_revisions() {
        assert_eq!(parse_start_from("start"), Ok(StartFrom::Start));
        assert_eq!(parse_start_from("end"), Ok(StartFrom::End));
        assert_eq!(parse_start_from("42"), Ok(StartFrom::Revision(42)));
        assert!(parse_start_from("-1").is_err());
    }

    #[test]
    fn passwords_are_masked_and_users_kept() {
        assert_eq!(
            mask_url("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:****@db:5432/orders"
        );
        assert_eq!(
            mask_url("kurrentdb://admin:changeit@kdb:2113?tls=false"),
            "kurrentdb://admin:****@kdb:2113?tls=false"
        );
        assert_eq!(
            mask_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(mask_url("host=db user=x"), "host=db user=x");
        assert_eq!(
            mask_url("host=db password=hunter2 user=x"),
            "host=db password=**** user=x"
        );
        assert_eq!(
            mask_url("host=db password = hunter2 user=x"),
            "host=db password = **** user=x"
        );
        assert_eq!(
            mask_url("host=db password='hunter 2\\'s' user=x"),
            "host=db password=**** user=x"
        );
        assert_eq!(
            mask_url("postgres://u@db/x?sslmode=require&password=hunter2"),
            "postgres://u@db/x?sslmode=require&password=****"
        );
        assert_eq!(
            mask_url("postgres://u:hun/ter2@db:5432/x"),
            "postgres://u:****@db:5432/x"
        );
    }
}
