//! The Redis state backend, for processors that run on several nodes.
//!
//! Per processor `group`: hash `flare:processor:{group}:state` (key → state bytes) and hash
//! `flare:processor:{group}:offsets` (`topic/partition` → next offset). A checkpoint is one
//! `MULTI`/`EXEC`, so Redis applies its states and offsets together or not at all.

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;

use super::{Checkpoint, PartitionOffset, StateError, StateStore};

pub struct RedisStateStore {
    connection: MultiplexedConnection,
}

impl RedisStateStore {
    /// Connects to `url` (`redis://host:port/db`).
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        let client = redis::Client::open(url)?;
        let connection = client.get_multiplexed_async_connection().await?;
        Ok(Self { connection })
    }
}

fn state_key(group: &str) -> String {
    format!("flare:processor:{{{group}}}:state")
}

fn offsets_key(group: &str) -> String {
    format!("flare:processor:{{{group}}}:offsets")
}

fn offset_field(topic: &str, partition: u32) -> String {
    // Topic names never contain `/`, so the last one separates the partition.
    format!("{topic}/{partition}")
}

#[async_trait]
impl StateStore for RedisStateStore {
    async fn load(&self, group: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut connection = self.connection.clone();
        Ok(redis::cmd("HGET")
            .arg(state_key(group))
            .arg(key)
            .query_async(&mut connection)
            .await?)
    }

    async fn offsets(&self, group: &str) -> Result<Vec<PartitionOffset>, StateError> {
        let mut connection = self.connection.clone();
        let entries: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(offsets_key(group))
            .query_async(&mut connection)
            .await?;
        let mut offsets = entries
            .into_iter()
            .map(|(field, next_offset)| {
                let (topic, partition) = field
                    .rsplit_once('/')
                    .and_then(|(t, p)| Some((t.to_owned(), p.parse().ok()?)))
                    .ok_or_else(|| StateError::CorruptOffset(field.clone()))?;
                Ok(PartitionOffset {
                    topic,
                    partition,
                    next_offset,
                })
            })
            .collect::<Result<Vec<_>, StateError>>()?;
        offsets.sort();
        Ok(offsets)
    }

    async fn checkpoint(&self, group: &str, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let (states, offsets) = (state_key(group), offsets_key(group));
        let mut upserts = redis::cmd("HSET");
        upserts.arg(&states);
        let mut deletes = redis::cmd("HDEL");
        deletes.arg(&states);
        let (mut any_upsert, mut any_delete) = (false, false);
        for (key, value) in &checkpoint.states {
            match value {
                Some(value) => {
                    upserts.arg(key).arg(value.as_slice());
                    any_upsert = true;
                }
                None => {
                    deletes.arg(key);
                    any_delete = true;
                }
            }
        }
        if any_upsert {
            pipe.add_command(upserts).ignore();
        }
        if any_delete {
            pipe.add_command(deletes).ignore();
        }
        if !checkpoint.offsets.is_empty() {
            let mut command = redis::cmd("HSET");
            command.arg(&offsets);
            for o in &checkpoint.offsets {
                command
                    .arg(offset_field(&o.topic, o.partition))
                    .arg(o.next_offset);
            }
            pipe.add_command(command).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    async fn all_states(&self, group: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut connection = self.connection.clone();
        let mut states: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(state_key(group))
            .query_async(&mut connection)
            .await?;
        states.sort();
        Ok(states)
    }

    async fn reset(&self, group: &str) -> Result<(), StateError> {
        let mut connection = self.connection.clone();
        redis::cmd("DEL")
            .arg(state_key(group))
            .arg(offsets_key(group))
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }
}
