//! The tables, indexes and views, connection settings and migrations.
//!
//! The schema version lives in `PRAGMA user_version`, the file's identity in
//! `PRAGMA application_id` ("EDRS"). `migrate` brings a file from any older
//! version to [`SCHEMA_VERSION`], one step a transaction; a file from a newer
//! agent is refused rather than guessed at. SCHEMA.md in this crate documents
//! every column.

use crate::error::StoreError;
use rusqlite::Connection;
use std::path::Path;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 4;

/// Page size of new stores (fixed at creation, like auto_vacuum). 16 KiB
/// pages were measured too: no faster ingest, and a WAL four times larger.
const PAGE_SIZE: u32 = 4096;

/// `PRAGMA application_id` of an edr store: "EDRS".
pub const APPLICATION_ID: i32 = 0x4544_5253;

/// Version 1: tables, indexes, views.
const V1: &str = r#"
CREATE TABLE events (
    id               INTEGER PRIMARY KEY,  -- the agent's event id
    time             INTEGER NOT NULL,     -- ns since the Unix epoch, UTC
    kind             INTEGER NOT NULL,     -- 1 exec, 2 exit, 3 file, 4 network, 5 login
    pid              INTEGER,
    entity_id        INTEGER,              -- u64 stored as its i64 bit pattern
    parent_entity_id INTEGER,              -- exec only; NULL when unknown
    ppid             INTEGER,
    exe              TEXT,
    command_line     TEXT,                 -- exec: argv joined by spaces
    path             TEXT,                 -- file
    op               INTEGER,              -- file: 1 create .. 7 read; network: 1 connect, 2 accept, 3 listen
    remote_ip        TEXT,
    remote_port      INTEGER,
    local_ip         TEXT,
    local_port       INTEGER,
    transport        INTEGER,              -- IP protocol number: 6 tcp, 17 udp
    uid              INTEGER,
    user             TEXT,                 -- exec: user name
    cwd              TEXT,
    old_path         TEXT,                 -- file rename: the previous path
    exit_code        INTEGER,              -- exit
    login_user       TEXT,                 -- login
    source_ip        TEXT,                 -- login
    success          INTEGER,              -- login: 1 or 0
    service          TEXT,                 -- login
    method           TEXT,                 -- login
    partial          INTEGER NOT NULL,     -- 1: the collector could not gather every field
    body             BLOB NOT NULL         -- the whole event, compact binary (codec.rs)
);
CREATE INDEX events_time   ON events(time);
CREATE INDEX events_entity ON events(entity_id, time) WHERE entity_id IS NOT NULL;
CREATE INDEX events_pid    ON events(pid, time) WHERE pid IS NOT NULL;
CREATE INDEX events_exec   ON events(entity_id) WHERE kind = 1;
CREATE INDEX events_parent ON events(parent_entity_id) WHERE parent_entity_id IS NOT NULL;
CREATE INDEX events_path   ON events(path, time) WHERE path IS NOT NULL;
CREATE INDEX events_old_path ON events(old_path) WHERE old_path IS NOT NULL;

CREATE TABLE alerts (
    id           INTEGER PRIMARY KEY,  -- the agent's alert id
    time         INTEGER NOT NULL,
    rule_id      TEXT NOT NULL,
    rule_name    TEXT NOT NULL,
    severity     TEXT NOT NULL,        -- informational, low, medium, high, critical
    score        INTEGER NOT NULL,     -- ECS event.severity: 1, 21, 47, 73, 99
    plugin       TEXT NOT NULL,
    pack_id      TEXT,
    pack_version TEXT,
    signer       TEXT,
    event_ids    TEXT NOT NULL,        -- JSON array of event ids
    techniques   TEXT NOT NULL,        -- JSON array of ATT&CK technique ids
    message      TEXT NOT NULL,
    entity_id    INTEGER,              -- the triggering event's process, when known
    pid          INTEGER,
    ecs          TEXT NOT NULL         -- the alert's ECS document (edr_event::ecs::alert_to_ecs)
);
CREATE INDEX alerts_time   ON alerts(time);
CREATE INDEX alerts_rule   ON alerts(rule_id, time);
CREATE INDEX alerts_entity ON alerts(entity_id) WHERE entity_id IS NOT NULL;

CREATE TABLE actions (
    id        INTEGER PRIMARY KEY,     -- the response engine's action id
    time      INTEGER NOT NULL,
    requester TEXT NOT NULL,           -- plugin, pack or operator that asked
    action    TEXT NOT NULL,           -- kill-process, quarantine-file, isolate-host, ...
    target    TEXT NOT NULL,
    decision  TEXT NOT NULL,           -- enforced, simulated, refused
    outcome   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    alert_id  INTEGER,
    detail    TEXT NOT NULL            -- JSON
);
CREATE INDEX actions_time  ON actions(time);
CREATE INDEX actions_alert ON actions(alert_id) WHERE alert_id IS NOT NULL;

-- Row counts and id high-water marks, kept in the same transactions as the
-- rows they count, so they are exact after a crash and ids are never reused
-- even when retention has emptied a table.
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES
    ('events', 0), ('alerts', 0), ('actions', 0),
    ('max_event_id', 0), ('max_alert_id', 0), ('max_action_id', 0);

-- The operators' query surface: read-only views with friendly names.
-- Times: `time` in ns, `ts` in RFC 3339 (ms). Entity ids: `entity_id` is the
-- 16-hex-digit ECS form, `entity` the stored integer (fast to filter on:
-- `WHERE entity = entity('00000000deadbeef')` in Store::query).
CREATE VIEW process AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       CASE kind WHEN 1 THEN 'exec' ELSE 'exit' END AS action,
       pid, ppid,
       printf('%016x', entity_id) AS entity_id,
       CASE WHEN parent_entity_id IS NOT NULL THEN printf('%016x', parent_entity_id) END AS parent_entity_id,
       entity_id AS entity, parent_entity_id AS parent_entity,
       exe, replace(exe, rtrim(exe, replace(exe, '/', '')), '') AS name,
       command_line, cwd, uid, user, exit_code, partial, body
FROM events WHERE kind IN (1, 2);

CREATE VIEW file AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       CASE op WHEN 1 THEN 'create' WHEN 2 THEN 'modify' WHEN 3 THEN 'delete' WHEN 4 THEN 'rename'
               WHEN 5 THEN 'chmod' WHEN 6 THEN 'attrib' WHEN 7 THEN 'read' END AS action,
       path, old_path, pid,
       CASE WHEN entity_id IS NOT NULL THEN printf('%016x', entity_id) END AS entity_id,
       entity_id AS entity, exe, uid, partial, body
FROM events WHERE kind = 3;

CREATE VIEW network AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       CASE op WHEN 1 THEN 'connect' WHEN 2 THEN 'accept' WHEN 3 THEN 'listen' END AS action,
       CASE transport WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' END AS transport,
       local_ip, local_port, remote_ip, remote_port, pid,
       CASE WHEN entity_id IS NOT NULL THEN printf('%016x', entity_id) END AS entity_id,
       entity_id AS entity, exe, uid, partial, body
FROM events WHERE kind = 4;

CREATE VIEW login AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       login_user AS user, source_ip, service, method, success, pid, partial, body
FROM events WHERE kind = 5;

CREATE VIEW alert AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       rule_id, rule_name, severity, score, plugin, pack_id, pack_version, signer,
       event_ids, techniques, message,
       CASE WHEN entity_id IS NOT NULL THEN printf('%016x', entity_id) END AS entity_id,
       entity_id AS entity, pid, ecs
FROM alerts;

CREATE VIEW action AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       requester, action, target, decision, outcome, reason, alert_id, detail
FROM actions;
"#;

/// Version 2: the anti-rollback floors of packs (see `PackFloors`).
const V2: &str = r#"
-- The highest version of each pack ever activated on this host, so that
-- deleting packs/state.json does not reset the agent's anti-rollback floor.
CREATE TABLE pack_floors (pack_id TEXT PRIMARY KEY, version TEXT NOT NULL, time INTEGER NOT NULL) WITHOUT ROWID;
"#;

/// Version 3: incidents (alerts grouped by storyline, `edr-incident`).
const V3: &str = r#"
-- Each alert's incident (NULL for alerts recorded before version 3, or by
-- an agent that does not group).
ALTER TABLE alerts ADD COLUMN incident_id INTEGER;
CREATE INDEX alerts_incident ON alerts(incident_id) WHERE incident_id IS NOT NULL;

-- One row per incident, replaced with each of its alerts.
CREATE TABLE incidents (
    id             INTEGER PRIMARY KEY,  -- its first alert's id
    first_time     INTEGER NOT NULL,     -- ns, its first alert
    last_time      INTEGER NOT NULL,     -- ns, its latest alert
    hostname       TEXT NOT NULL,
    root_entity_id INTEGER,              -- the top of its process tree
    root_pid       INTEGER,
    root_exe       TEXT NOT NULL,
    severity       TEXT NOT NULL,        -- the highest of its rules
    score          INTEGER NOT NULL,     -- 1-100
    alert_count    INTEGER NOT NULL,     -- repeats included
    suppressed     INTEGER NOT NULL,     -- repeats not sent to outputs again
    rules          TEXT NOT NULL,        -- JSON [{id, name, severity, count}]
    summary        TEXT NOT NULL
);
CREATE INDEX incidents_last ON incidents(last_time);

CREATE VIEW incident AS
SELECT id, first_time, last_time,
       strftime('%Y-%m-%dT%H:%M:%fZ', first_time / 1e9, 'unixepoch') AS first_ts,
       strftime('%Y-%m-%dT%H:%M:%fZ', last_time / 1e9, 'unixepoch') AS last_ts,
       hostname,
       CASE WHEN root_entity_id IS NOT NULL THEN printf('%016x', root_entity_id) END AS root_entity_id,
       root_entity_id AS root_entity, root_pid, root_exe,
       severity, score, alert_count, suppressed, rules, summary
FROM incidents;

DROP VIEW alert;
CREATE VIEW alert AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       rule_id, rule_name, severity, score, plugin, pack_id, pack_version, signer,
       event_ids, techniques, message,
       CASE WHEN entity_id IS NOT NULL THEN printf('%016x', entity_id) END AS entity_id,
       entity_id AS entity, pid, incident_id, ecs
FROM alerts;
"#;

/// Version 4: the exec's gid and cgroup id, the connection's network
/// namespace and a close's byte counts as columns, and in the views (after
/// their earlier columns, which keep their order). Rows recorded before
/// version 4 have them NULL in the columns (their bodies keep what the agent
/// had then: gid and cgroup id from body format 2 and 3, netns from 4).
const V4: &str = r#"
ALTER TABLE events ADD COLUMN gid            INTEGER;  -- exec: effective gid
ALTER TABLE events ADD COLUMN cgroup_id      INTEGER;  -- exec: cgroup v2 id (u64 as its i64 bit pattern), 0 unknown
ALTER TABLE events ADD COLUMN netns          INTEGER;  -- network: namespace inode
ALTER TABLE events ADD COLUMN bytes_sent     INTEGER;  -- network close: sequence space sent and acked
ALTER TABLE events ADD COLUMN bytes_received INTEGER;  -- network close: sequence space received

DROP VIEW process;
CREATE VIEW process AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       CASE kind WHEN 1 THEN 'exec' ELSE 'exit' END AS action,
       pid, ppid,
       printf('%016x', entity_id) AS entity_id,
       CASE WHEN parent_entity_id IS NOT NULL THEN printf('%016x', parent_entity_id) END AS parent_entity_id,
       entity_id AS entity, parent_entity_id AS parent_entity,
       exe, replace(exe, rtrim(exe, replace(exe, '/', '')), '') AS name,
       command_line, cwd, uid, user, exit_code, partial, body,
       gid, cgroup_id
FROM events WHERE kind IN (1, 2);

DROP VIEW network;
CREATE VIEW network AS
SELECT id, time, strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch') AS ts,
       CASE op WHEN 1 THEN 'connect' WHEN 2 THEN 'accept' WHEN 3 THEN 'listen' WHEN 4 THEN 'close' END AS action,
       CASE transport WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' END AS transport,
       local_ip, local_port, remote_ip, remote_port, pid,
       CASE WHEN entity_id IS NOT NULL THEN printf('%016x', entity_id) END AS entity_id,
       entity_id AS entity, exe, uid, partial, body,
       netns, bytes_sent, bytes_received
FROM events WHERE kind = 4;
"#;

/// The migration steps: `STEPS[i]` takes a file from version `i` to `i + 1`.
const STEPS: &[&str] = &[V1, V2, V3, V4];

/// Writes the schema of an older `version` (1..=[`SCHEMA_VERSION`]) into an
/// empty database, as an agent of that version left it: for tests that
/// check that old stores open and migrate.
#[doc(hidden)]
pub fn create_at_version(conn: &Connection, version: i32) -> rusqlite::Result<()> {
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    for step in STEPS.iter().take(version.clamp(0, SCHEMA_VERSION) as usize) {
        conn.execute_batch(step)?;
    }
    conn.pragma_update(None, "user_version", version)
}

/// Sets the per-connection pragmas of the writing connection.
///
/// * `journal_mode = WAL`: readers never block the writer nor it them, and a
///   commit is one sequential append to the WAL.
/// * `synchronous = NORMAL`: in WAL mode a commit is written to the WAL (the
///   OS page cache) but not fsynced; the WAL is fsynced at each checkpoint.
///   A killed agent (kill -9, panic, OOM) loses nothing that was committed,
///   because the kernel still has the pages; only an OS crash or power cut
///   can lose the transactions since the last checkpoint, and even then the
///   file is never corrupt (WAL frames are checksummed and replayed or
///   dropped whole). `FULL` would fsync every commit, putting the disk's
///   flush latency (ms to tens of ms, more on a busy host) on the writer's
///   path for a guarantee only power loss needs.
/// * `journal_size_limit`: truncates the WAL back to 64 MiB after a
///   checkpoint so a burst does not leave a large file behind.
pub(crate) fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(open_err)?;
    // Must come first: a new file's auto_vacuum mode is fixed once it is
    // switched to WAL or gets a table (changing it later needs a full
    // VACUUM). On an existing file this is a no-op.
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}; PRAGMA auto_vacuum = INCREMENTAL;")).map_err(open_err)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "the event store could not switch to WAL mode; writes will block readers");
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(open_err)?;
    Ok(())
}

/// Creates the schema in a new file, or migrates an older one.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(open_err)?;
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(open_err)?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).map_err(open_err)?;
    if tables > 0 && app_id != APPLICATION_ID {
        return Err(StoreError::NotAStore { path: path.to_path_buf(), found: app_id, expected: APPLICATION_ID });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew { path: path.to_path_buf(), found: version, supported: SCHEMA_VERSION });
    }
    if version < 0 || (version == 0 && tables > 0) {
        return Err(StoreError::BadVersion { path: path.to_path_buf(), found: version });
    }
    if tables == 0 {
        conn.pragma_update(None, "application_id", APPLICATION_ID).map_err(open_err)?;
    }
    let auto_vacuum: i32 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).map_err(open_err)?;
    if auto_vacuum != 2 {
        tracing::warn!(
            path = %path.display(),
            auto_vacuum,
            "the event store is not in incremental auto_vacuum mode: retention frees pages for reuse but cannot shrink the file (run `VACUUM` offline after `PRAGMA auto_vacuum = INCREMENTAL` to fix)"
        );
    }
    for (from, step) in STEPS.iter().enumerate().skip(version as usize) {
        let to = from as i32 + 1;
        let tx = conn.transaction().map_err(open_err)?;
        tx.execute_batch(step).map_err(StoreError::sql(format!("migrating the event store from schema {from} to {to}")))?;
        tx.pragma_update(None, "user_version", to).map_err(open_err)?;
        tx.commit().map_err(open_err)?;
        tracing::info!(path = %path.display(), from, to, "event store schema migrated");
    }
    Ok(())
}
