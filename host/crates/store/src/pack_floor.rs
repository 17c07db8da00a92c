//! The highest version of each pack ever activated on this host: the
//! agent's anti-rollback floors, kept in the record as well as in
//! `packs/state.json`, so that deleting that one file does not let an older
//! (perhaps vulnerable) version of a pack back in. The agent takes the
//! higher of the two at start.

use crate::error::StoreError;
use crate::Store;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::time::Duration;

/// A handle on the `pack_floors` table. It opens its own short-lived
/// connection per call (activations are rare), so it can be moved to the
/// agent's pack thread while the [`Store`] stays where it is.
#[derive(Debug, Clone)]
pub struct PackFloors {
    path: PathBuf,
    read_only: bool,
}

impl Store {
    /// The anti-rollback floors kept in this store.
    pub fn pack_floors(&self) -> PackFloors {
        PackFloors { path: self.path().to_path_buf(), read_only: self.maintenance.is_none() }
    }
}

impl PackFloors {
    fn connect(&self, flags: OpenFlags) -> Result<Connection, StoreError> {
        let open_err = |source| StoreError::Open { path: self.path.clone(), source };
        let conn = Connection::open_with_flags(&self.path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(open_err)?;
        Ok(conn)
    }

    /// Every pack's floor: `(pack id, version)`, as recorded.
    pub fn all(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.connect(OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let what = "reading the pack floors";
        let mut stmt = conn.prepare("SELECT pack_id, version FROM pack_floors ORDER BY pack_id").map_err(StoreError::sql(what))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(StoreError::sql(what))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(StoreError::sql(what))
    }

    /// Sets `pack_id`'s floor to `version` (committed when this returns).
    /// The caller passes the highest version it knows of, which is never
    /// below what [`PackFloors::all`] returned: the store does not order
    /// versions itself.
    pub fn record(&self, pack_id: &str, version: &str) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let conn = self.connect(OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let now = edr_event::time::now() as i64;
        conn.execute(
            "INSERT INTO pack_floors (pack_id, version, time) VALUES (?1, ?2, ?3)
             ON CONFLICT (pack_id) DO UPDATE SET version = excluded.version, time = excluded.time",
            rusqlite::params![pack_id, version, now],
        )
        .map_err(StoreError::sql(format!("recording the anti-rollback floor {pack_id} {version}")))?;
        Ok(())
    }
}
