//! Durable state: one trait, an embedded database behind it, and an in-memory one for tests.
//!
//! The daemon keeps its whole state as one snapshot (the core's state, the chain follower's
//! cursor and the transaction outbox) and replaces it in a single transaction after each batch
//! of events, *before* it acts on the batch's decisions. The database commits with fsync
//! (redb's immediate durability), so `kill -9` at any moment leaves either the previous snapshot
//! or the new one, never half of one, and nothing the daemon acted on is lost.
//!
//! The snapshot is JSON inside the database: small (kilobytes), readable when debugging
//! (`zeppelin status --json` shows the same data), and versioned by its own `version` field.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reading or writing the state failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the state database {path}: {source}")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error("state database {path}: {source}")]
    Database { path: PathBuf, source: redb::Error },
    #[error("state database {path} holds a snapshot this version cannot read: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
}

/// Where the daemon keeps its state between runs.
pub trait Store<T> {
    /// The last saved snapshot, if any.
    fn load(&self) -> Result<Option<T>, StoreError>;
    /// Replaces the snapshot atomically and durably.
    fn save(&self, snapshot: &T) -> Result<(), StoreError>;
}

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const SNAPSHOT_KEY: &str = "snapshot";

/// The embedded database (redb) in the state directory.
pub struct DbStore {
    path: PathBuf,
    db: Database,
}

impl DbStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db =
            Database::create(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
        Ok(DbStore { path: path.to_owned(), db })
    }

    fn err(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Database { path: self.path.clone(), source: source.into() }
    }
}

impl<T: Serialize + DeserializeOwned> Store<T> for DbStore {
    fn load(&self) -> Result<Option<T>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match read.open_table(STATE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(bytes) = table.get(SNAPSHOT_KEY).map_err(|e| self.err(e))? else { return Ok(None) };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|source| StoreError::Decode { path: self.path.clone(), source })
    }

    fn save(&self, snapshot: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(snapshot).expect("snapshots always serialize");
        let write = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = write.open_table(STATE).map_err(|e| self.err(e))?;
            table.insert(SNAPSHOT_KEY, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        write.commit().map_err(|e| self.err(e))
    }
}

/// A store in memory, for unit tests of the code that drives the core.
#[derive(Default)]
pub struct MemStore {
    snapshot: Mutex<Option<Vec<u8>>>,
}

impl<T: Serialize + DeserializeOwned> Store<T> for MemStore {
    fn load(&self) -> Result<Option<T>, StoreError> {
        let guard = self.snapshot.lock().expect("not poisoned");
        Ok(guard.as_ref().map(|b| serde_json::from_slice(b).expect("saved by this process")))
    }

    fn save(&self, snapshot: &T) -> Result<(), StoreError> {
        *self.snapshot.lock().expect("not poisoned") =
            Some(serde_json::to_vec(snapshot).expect("serializes"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Snap {
        block: u64,
        names: Vec<String>,
    }

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zeppelin-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.redb")
    }

    #[test]
    fn a_new_database_has_no_snapshot_and_a_saved_one_survives_reopening() {
        let path = temp_db("reopen");
        {
            let store = DbStore::open(&path).unwrap();
            assert_eq!(Store::<Snap>::load(&store).unwrap(), None);
            store.save(&Snap { block: 7, names: vec!["a".into()] }).unwrap();
            store.save(&Snap { block: 8, names: vec!["b".into()] }).unwrap();
        }
        let store = DbStore::open(&path).unwrap();
        assert_eq!(Store::<Snap>::load(&store).unwrap(), Some(Snap { block: 8, names: vec!["b".into()] }));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_unreadable_snapshot_is_an_error_naming_the_file() {
        let path = temp_db("decode");
        let store = DbStore::open(&path).unwrap();
        store.save(&serde_json::json!({"block": "not a number"})).unwrap();
        let err = Store::<Snap>::load(&store).unwrap_err().to_string();
        assert!(err.starts_with(&format!("state database {} holds a snapshot", path.display())), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_memory_store_round_trips() {
        let store = MemStore::default();
        assert_eq!(Store::<Snap>::load(&store).unwrap(), None);
        store.save(&Snap { block: 1, names: vec![] }).unwrap();
        assert_eq!(Store::<Snap>::load(&store).unwrap(), Some(Snap { block: 1, names: vec![] }));
    }
}
