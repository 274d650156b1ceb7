//! The Pinned strategy's bucket ownership, following the server's rules.
//!
//! A message's source stream hashes into one of 1024 buckets. A bucket
//! without an owner goes to the connected consumer owning the fewest
//! buckets (the earliest joined on a tie). When a consumer joins, every
//! consumer owning more than its balanced share (all owned buckets over
//! the consumer count, rounded up) hands the excess to the newcomer,
//! buckets with the fewest messages in flight first. A leaving
//! consumer's buckets become unowned. A message whose owner is full waits.
//!
//! Known gap: the server hashes stream names with its own xxHash variant;
//! the emulator uses a different fixed hash, so which streams share a
//! bucket differs (the balance between consumers does not).

use std::hash::{DefaultHasher, Hash, Hasher};

/// The number of buckets, as upstream.
pub const BUCKETS: usize = 1024;

/// The bucket of a source stream.
pub fn bucket_of(stream: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    stream.hash(&mut hasher);
    (hasher.finish() % BUCKETS as u64) as usize
}

/// Who owns which bucket.
pub(crate) struct Buckets {
    owners: Vec<Option<u64>>,
    in_flight: Vec<u32>,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            owners: vec![None; BUCKETS],
            in_flight: vec![0; BUCKETS],
        }
    }
}

impl Buckets {
    /// Rebalances towards `newcomer`; `connected` lists every consumer in
    /// join order, the newcomer included.
    pub fn join(&mut self, newcomer: u64, connected: &[u64]) {
        let owned = self.owners.iter().flatten().count();
        let share = owned.div_ceil(connected.len().max(1));
        for &existing in connected.iter().filter(|&&c| c != newcomer) {
            let mut buckets: Vec<usize> = (0..BUCKETS)
                .filter(|&b| self.owners[b] == Some(existing))
                .collect();
            let excess = buckets.len().saturating_sub(share);
            // A stable sort keeps bucket order among equal counts.
            buckets.sort_by_key(|&b| self.in_flight[b]);
            for bucket in buckets.into_iter().take(excess) {
                self.owners[bucket] = Some(newcomer);
            }
        }
    }

    /// Frees a leaving consumer's buckets.
    pub fn leave(&mut self, consumer: u64) {
        for (owner, count) in self.owners.iter_mut().zip(&mut self.in_flight) {
            if *owner == Some(consumer) {
                *owner = None;
                *count = 0;
            }
        }
    }

    /// Forgets every owner (all consumers were dropped).
    pub fn clear(&mut self) {
        *self = Buckets::default();
    }

    /// The owner of `bucket`, assigning it first if it has none.
    pub fn owner(&mut self, bucket: usize, connected: &[u64]) -> Option<u64> {
        if self.owners[bucket].is_none() {
            let fewest = connected
                .iter()
                .copied()
                .min_by_key(|&c| self.owners.iter().filter(|&&o| o == Some(c)).count())?;
            self.owners[bucket] = Some(fewest);
        }
        self.owners[bucket]
    }

    /// A message of `bucket` was sent to its owner.
    pub fn sent(&mut self, bucket: usize) {
        self.in_flight[bucket] += 1;
    }

    /// A message of `bucket` held by `consumer` was settled.
    pub fn settled(&mut self, bucket: usize, consumer: u64) {
        if self.owners[bucket] == Some(consumer) {
            self.in_flight[bucket] = self.in_flight[bucket].saturating_sub(1);
        }
    }
}
