//! The set of groups, keyed by stream and name, and the operations the
//! gRPC service and the library API perform on them.
//!
//! Group definitions live as long as the [`crate::Store`]: a server
//! restarted over the same store finds its groups and reloads them from
//! their checkpoints. Every create, update and delete also writes the
//! whole configuration to `$persistentSubscriptionConfig`, as the server
//! does; a store reopened from a data directory rebuilds its groups from
//! the last of those records.

use std::collections::BTreeMap;
use std::time::Instant;

use tonic::Status;
use uuid::Uuid;

use super::filter::Filter;
use super::group::{Group, GroupFull, Joining};
use super::settings::{ConfigEntry, Settings};
use super::stats::GroupStats;
use crate::events::NewEvent;
use crate::log::Log;
use crate::proto::persistent as pb;
use crate::status;

/// Why a group operation was refused.
#[derive(Debug)]
pub(crate) enum GroupError {
    Exists,
    NotFound,
    Full,
}

impl GroupError {
    /// The status the server answers with.
    pub fn to_status(&self, stream: &str, group: &str) -> Status {
        match self {
            GroupError::Exists => status::group_exists(stream, group),
            GroupError::NotFound => status::group_not_found(stream, group),
            GroupError::Full => status::group_full(stream, group),
        }
    }
}

/// The stream the group configuration is kept in, and its event type.
const CONFIG_STREAM: &str = "$persistentSubscriptionConfig";
const CONFIG_TYPE: &str = "$PersistentConfig";

/// The configuration record's shape.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    version: String,
    updated: String,
    updated_by: String,
    entries: Vec<ConfigEntry>,
}

type Key = (String, String);

fn key(stream: &str, group: &str) -> Key {
    (stream.to_owned(), group.to_owned())
}

/// Every group.
#[derive(Default)]
pub(crate) struct Groups {
    groups: BTreeMap<Key, Group>,
}

impl Groups {
    pub fn create(
        &mut self,
        log: &mut Log,
        stream: &str,
        name: &str,
        settings: Settings,
        filter: Option<Filter>,
    ) -> Result<(), GroupError> {
        let key = key(stream, name);
        if self.groups.contains_key(&key) {
            return Err(GroupError::Exists);
        }
        let group = Group::new(stream, name, settings, filter, log);
        self.groups.insert(key, group);
        self.save_config(log);
        tracing::info!(stream, group = name, "group created");
        Ok(())
    }

    /// New settings (a `$all` group keeps its filter); consumers are
    /// dropped and the group reloads.
    pub fn update(
        &mut self,
        log: &mut Log,
        stream: &str,
        name: &str,
        settings: Settings,
    ) -> Result<(), GroupError> {
        let group = self.get(stream, name)?;
        group.drop_consumers(&status::dropped(stream, name));
        group.set_settings(settings);
        group.load(log);
        self.save_config(log);
        tracing::info!(stream, group = name, "group updated");
        Ok(())
    }

    /// Rebuilds the groups from the last configuration record (a store
    /// reopened from disk). Entries that do not parse are skipped.
    pub fn load_config(&mut self, log: &Log) {
        let Some(record) = log
            .stream(CONFIG_STREAM)
            .and_then(|data| data.visible().last().cloned())
        else {
            return;
        };
        let Ok(config) = serde_json::from_slice::<Config>(&record.data) else {
            tracing::warn!("group configuration does not parse; no groups loaded");
            return;
        };
        for entry in config.entries {
            let filter = entry.filter.as_ref().map(Filter::from_config);
            match (entry.settings(), filter.transpose()) {
                (Some(settings), Ok(filter)) => {
                    let group = Group::new(&entry.stream, &entry.group, settings, filter, log);
                    self.groups.insert(key(&entry.stream, &entry.group), group);
                }
                _ => tracing::warn!(
                    stream = %entry.stream,
                    group = %entry.group,
                    "group configuration entry does not parse; skipped"
                ),
            }
        }
    }

    fn save_config(&self, log: &mut Log) {
        let entries = self
            .groups
            .values()
            .map(|g| {
                let filter = g.filter().map(Filter::to_config);
                ConfigEntry::new(g.stream(), g.name(), g.settings(), filter)
            })
            .collect();
        let config = Config {
            version: "2".to_owned(),
            updated: chrono::Utc::now().to_rfc3339(),
            updated_by: "admin".to_owned(),
            entries,
        };
        let data = serde_json::to_value(&config).unwrap_or_default();
        if log.stream(CONFIG_STREAM).is_none() {
            let metadata = serde_json::json!({ "$maxCount": 2 });
            let meta_stream = format!("$${CONFIG_STREAM}");
            log.write(&meta_stream, NewEvent::json("$metadata", &metadata));
        }
        log.write(CONFIG_STREAM, NewEvent::json(CONFIG_TYPE, &data));
        log.keep_last(CONFIG_STREAM, 2);
    }

    /// Removes a group with its checkpoint and parked streams.
    pub fn delete(&mut self, log: &mut Log, stream: &str, name: &str) -> Result<(), GroupError> {
        let mut group = self
            .groups
            .remove(&key(stream, name))
            .ok_or(GroupError::NotFound)?;
        group.drop_consumers(&status::dropped(stream, name));
        group.remove_streams(log);
        self.save_config(log);
        tracing::info!(stream, group = name, "group deleted");
        Ok(())
    }

    pub fn join(
        &mut self,
        log: &mut Log,
        stream: &str,
        name: &str,
        joining: Joining,
    ) -> Result<(), GroupError> {
        let consumer = joining.id;
        self.get(stream, name)?
            .join(log, joining)
            .map_err(|GroupFull| GroupError::Full)?;
        tracing::info!(stream, group = name, consumer, "consumer joined");
        Ok(())
    }

    pub fn leave(&mut self, log: &mut Log, stream: &str, name: &str, id: u64) {
        if let Ok(group) = self.get(stream, name) {
            group.leave(log, id);
            tracing::info!(stream, group = name, consumer = id, "consumer left");
        }
    }

    pub fn ack(&mut self, log: &mut Log, stream: &str, name: &str, ids: &[Uuid]) {
        if let Ok(group) = self.get(stream, name) {
            group.ack(log, ids);
        }
    }

    pub fn nack(
        &mut self,
        log: &mut Log,
        stream: &str,
        name: &str,
        ids: &[Uuid],
        action: pb::read_req::nack::Action,
        reason: &str,
    ) {
        if let Ok(group) = self.get(stream, name) {
            group.nack(log, ids, action, reason);
        }
    }

    pub fn info(
        &mut self,
        log: &Log,
        stream: &str,
        name: &str,
    ) -> Result<pb::SubscriptionInfo, GroupError> {
        Ok(self.get(stream, name)?.info(log))
    }

    /// Every group, or those reading `stream`.
    pub fn list(&mut self, log: &Log, stream: Option<&str>) -> Vec<pb::SubscriptionInfo> {
        self.groups
            .values_mut()
            .filter(|g| stream.is_none_or(|s| g.stream() == s))
            .map(|g| g.info(log))
            .collect()
    }

    pub fn replay_parked(
        &mut self,
        log: &mut Log,
        stream: &str,
        name: &str,
        stop_at: Option<u64>,
    ) -> Result<(), GroupError> {
        self.get(stream, name)?.replay_parked(log, stop_at);
        Ok(())
    }

    /// Drops every consumer and reloads every group from its checkpoint.
    pub fn restart(&mut self, log: &Log) {
        self.drop_all();
        for group in self.groups.values_mut() {
            group.load(log);
        }
    }

    /// Ends every consumer's subscription.
    pub fn drop_all(&mut self) {
        for group in self.groups.values_mut() {
            let dropped = status::dropped(group.stream(), group.name());
            group.drop_consumers(&dropped);
        }
    }

    /// Ends every consumer's call with OK, which the real server never
    /// does; see `Server::end_subscriptions_cleanly`.
    pub fn end_all_cleanly(&mut self) {
        let clean = tonic::Status::new(tonic::Code::Ok, "");
        for group in self.groups.values_mut() {
            group.drop_consumers(&clean);
        }
    }

    pub fn tick(&mut self, log: &mut Log, now: Instant) {
        for group in self.groups.values_mut() {
            group.tick(log, now);
        }
    }

    /// Lets groups reading any of `streams` push what was just written.
    pub fn notify(&mut self, log: &mut Log, streams: &[String]) {
        for group in self.groups.values_mut() {
            if streams.iter().any(|s| group.reads(s)) {
                group.notify(log);
            }
        }
    }

    pub fn stats(&self, log: &Log, stream: &str, name: &str) -> Option<GroupStats> {
        Some(self.groups.get(&key(stream, name))?.stats(log))
    }

    fn get(&mut self, stream: &str, name: &str) -> Result<&mut Group, GroupError> {
        self.groups
            .get_mut(&key(stream, name))
            .ok_or(GroupError::NotFound)
    }
}
