//! Which events of the global log a `$all` group delivers.
//!
//! As upstream, every `$all` group applies a default rule: events of
//! non-system streams pass, and so do system streams except
//! `$epoch-information` and the checkpoint and parked streams of `$all`
//! groups themselves (so a group never feeds on its own bookkeeping).
//! Other system streams (`$ce-`, `$et-`, stream groups' checkpoints,
//! `$$` metadata) do reach a `$all` group without a filter, exactly as on
//! the real server. A filter (stream-name or event-type, by prefixes or
//! by a regex) is applied on top of that rule.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::events::StoredEvent;
use crate::proto::persistent as pb;

/// What a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    /// The event's stream name.
    StreamId,
    /// The event's type.
    EventType,
}

/// A `$all` group's filter.
#[derive(Debug, Clone)]
pub struct Filter {
    context: Context,
    rule: Rule,
}

#[derive(Debug, Clone)]
enum Rule {
    Prefixes(Vec<String>),
    Regex(Regex),
}

/// The persisted form, after the server's configuration entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilterConfig {
    /// `streamid` or `eventtype`.
    pub context: Context,
    /// `prefix` or `regex`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Comma-separated prefixes, or the regex.
    pub data: String,
}

impl Filter {
    /// The wire filter of a Create; the error is the server's reason.
    pub fn from_wire(wire: &pb::all_options::FilterOptions) -> Result<Option<Filter>, String> {
        use pb::all_options::filter_options::Filter as F;
        let (context, expression) = match &wire.filter {
            Some(F::StreamIdentifier(e)) => (Context::StreamId, e),
            Some(F::EventType(e)) => (Context::EventType, e),
            None => return Ok(None),
        };
        let rule = if expression.regex.is_empty() {
            Rule::Prefixes(expression.prefix.clone())
        } else {
            Rule::Regex(compile(&expression.regex)?)
        };
        Ok(Some(Filter { context, rule }))
    }

    /// The form kept in the group configuration stream.
    pub fn to_config(&self) -> FilterConfig {
        let (kind, data) = match &self.rule {
            Rule::Prefixes(prefixes) => ("prefix", prefixes.join(",")),
            Rule::Regex(regex) => ("regex", regex.as_str().to_owned()),
        };
        FilterConfig {
            context: self.context,
            kind: kind.to_owned(),
            data,
        }
    }

    /// Back from the configuration stream.
    pub fn from_config(config: &FilterConfig) -> Result<Filter, String> {
        let rule = match config.kind.as_str() {
            "regex" => Rule::Regex(compile(&config.data)?),
            _ => Rule::Prefixes(config.data.split(',').map(str::to_owned).collect()),
        };
        Ok(Filter {
            context: config.context,
            rule,
        })
    }

    fn matches(&self, event: &StoredEvent) -> bool {
        let subject = match self.context {
            Context::StreamId => &event.stream,
            Context::EventType => &event.event_type,
        };
        match &self.rule {
            Rule::Prefixes(prefixes) => prefixes.iter().any(|p| subject.starts_with(p.as_str())),
            Rule::Regex(regex) => regex.is_match(subject),
        }
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|error| format!("Invalid filter regex: {error}"))
}

/// Whether a `$all` group with `filter` delivers `event`.
pub fn all_group_allows(filter: Option<&Filter>, event: &StoredEvent) -> bool {
    default_allows(&event.stream) && filter.is_none_or(|f| f.matches(event))
}

/// The server's default rule for `$all` groups.
fn default_allows(stream: &str) -> bool {
    if !stream.starts_with('$') {
        return true;
    }
    if stream == "$epoch-information" {
        return false;
    }
    let own = "$persistentsubscription-$all::";
    !(stream.starts_with(own) && (stream.ends_with("-checkpoint") || stream.ends_with("-parked")))
}
