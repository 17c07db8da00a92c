//! Read-only connections, and the operators' SQL surface ([`crate::Store::query`]).
//!
//! Every read goes through a connection that is read-only three times over:
//! opened with `SQLITE_OPEN_READ_ONLY`, `PRAGMA query_only = 1`, and an
//! authorizer that allows reading, functions and recursion and denies
//! everything else (writes, schema changes, ATTACH, and every PRAGMA except
//! a few that only describe the schema, such as `pragma_table_info`). A
//! progress handler interrupts any statement that runs past the query time
//! limit. `Store::query` also accepts only one statement, which must start
//! with SELECT or WITH and which SQLite must report as read-only.

use crate::codec;
use crate::error::StoreError;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The result of [`crate::Store::query`]: column names and rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, each with one value per column: integers and reals as JSON
    /// numbers, text as strings, NULL as null, blobs as lowercase hex strings.
    pub rows: Vec<Vec<Value>>,
    /// More rows matched than the row limit; only the first ones are here.
    pub truncated: bool,
}

/// PRAGMAs a query may read (through their table-valued forms): they only describe the schema.
const ALLOWED_PRAGMAS: &[&str] = &["table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"];

/// PRAGMAs a query may read only without an argument: sizes and versions.
const READABLE_PRAGMAS: &[&str] = &["page_count", "freelist_count", "page_size", "user_version", "application_id", "schema_version"];

/// SQL functions a query may not call even though the build might offer them.
const DENIED_FUNCTIONS: &[&str] = &["load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"];

/// The authorizer's verdict on one action, with the reason kept for the error message.
fn authorize(ctx: &AuthContext<'_>) -> Result<(), String> {
    match ctx.action {
        AuthAction::Select | AuthAction::Read { .. } | AuthAction::Recursive => Ok(()),
        // Read transactions (used to read a consistent snapshot) write nothing.
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Ok(()),
        AuthAction::Function { function_name } => {
            if DENIED_FUNCTIONS.iter().any(|f| f.eq_ignore_ascii_case(function_name)) {
                Err(format!("the function {function_name}() is not available to queries"))
            } else {
                Ok(())
            }
        }
        AuthAction::Pragma { pragma_name, pragma_value } => {
            let describes = ALLOWED_PRAGMAS.iter().any(|p| p.eq_ignore_ascii_case(pragma_name));
            let reads = pragma_value.is_none() && READABLE_PRAGMAS.iter().any(|p| p.eq_ignore_ascii_case(pragma_name));
            if describes || reads {
                Ok(())
            } else {
                Err(format!("PRAGMA {pragma_name} is not allowed; queries may only read the schema with pragma_table_info() and friends"))
            }
        }
        AuthAction::Attach { filename } => Err(format!("ATTACH ('{filename}') is not allowed: queries read this store only")),
        AuthAction::Detach { .. } => Err("DETACH is not allowed".into()),
        AuthAction::Insert { table_name } => Err(format!("INSERT into {table_name} is not allowed: the store is read-only here")),
        AuthAction::Update { table_name, .. } => Err(format!("UPDATE of {table_name} is not allowed: the store is read-only here")),
        AuthAction::Delete { table_name } => Err(format!("DELETE from {table_name} is not allowed: the store is read-only here")),
        ref other => Err(format!("{} is not allowed: the store is read-only here", action_name(other))),
    }
}

fn action_name(a: &AuthAction<'_>) -> String {
    let dbg = format!("{a:?}");
    let name = dbg.split([' ', '{', '(']).next().unwrap_or("this statement").to_string();
    // CreateTable -> CREATE TABLE, DropView -> DROP VIEW, ...
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A pooled read-only connection, with its query deadline.
pub(crate) struct ReadConn {
    pub(crate) conn: Connection,
    /// Nanoseconds after the pool's epoch when the running statement must stop; 0: no limit.
    deadline: Arc<AtomicU64>,
    /// Why the authorizer last said no.
    denied: Arc<Mutex<Option<String>>>,
}

/// Read-only connections, opened on demand and kept for reuse.
pub(crate) struct ReadPool {
    path: PathBuf,
    epoch: Instant,
    idle: Mutex<Vec<ReadConn>>,
    pub(crate) query_timeout: Duration,
    pub(crate) max_rows: usize,
    pub(crate) mmap_bytes: u64,
}

/// Connections kept idle for reuse; more are opened under load and closed after.
const MAX_IDLE: usize = 4;

impl ReadPool {
    pub(crate) fn new(path: &Path, query_timeout: Duration, max_rows: usize, mmap_bytes: u64) -> Self {
        ReadPool { path: path.to_path_buf(), epoch: Instant::now(), idle: Mutex::new(Vec::new()), query_timeout, max_rows, mmap_bytes }
    }

    fn open(&self) -> Result<ReadConn, StoreError> {
        let open_err = |source| StoreError::Open { path: self.path.clone(), source };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let mut conn = Connection::open_with_flags(&self.path, flags).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(open_err)?;
        conn.execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY;").map_err(open_err)?;
        if self.mmap_bytes > 0 {
            conn.pragma_update(None, "mmap_size", self.mmap_bytes.min(i64::MAX as u64) as i64).map_err(open_err)?;
        }
        register_functions(&conn).map_err(open_err)?;
        let deadline = Arc::new(AtomicU64::new(0));
        let d = deadline.clone();
        let epoch = self.epoch;
        conn.progress_handler(
            20_000,
            Some(move || {
                let limit = d.load(Ordering::Relaxed);
                limit != 0 && epoch.elapsed().as_nanos() as u64 > limit
            }),
        )
        .map_err(open_err)?;
        let denied = Arc::new(Mutex::new(None));
        let slot = denied.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| match authorize(&ctx) {
            Ok(()) => Authorization::Allow,
            Err(reason) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                Authorization::Deny
            }
        }))
        .map_err(open_err)?;
        Ok(ReadConn { conn, deadline, denied })
    }

    /// A connection whose statements stop after the query time limit.
    pub(crate) fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let c = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let limit = self.epoch.elapsed() + self.query_timeout;
        c.deadline.store(limit.as_nanos() as u64, Ordering::Relaxed);
        *c.denied.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(Pooled { pool: self, conn: Some(c), started: Instant::now() })
    }
}

/// A connection borrowed from the pool; returned to it on drop.
pub(crate) struct Pooled<'p> {
    pool: &'p ReadPool,
    conn: Option<ReadConn>,
    started: Instant,
}

impl Pooled<'_> {
    /// Maps a SQLite error to a store error: interrupts become timeouts.
    pub(crate) fn err(&self, what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        let what = what.into();
        move |source| {
            // Table-valued pragmas are authorized when they run, not when prepared.
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) {
                if let Some(reason) = self.denied() {
                    return StoreError::QueryRefused { reason };
                }
            }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) {
                StoreError::QueryTimeout { seconds: self.started.elapsed().as_secs_f64(), limit_seconds: self.pool.query_timeout.as_secs_f64() }
            } else {
                StoreError::Sql { what, source }
            }
        }
    }

    fn denied(&self) -> Option<String> {
        self.conn.as_ref().and_then(|c| c.denied.lock().unwrap_or_else(|p| p.into_inner()).take())
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn.as_ref().expect("present until drop").conn
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            c.deadline.store(0, Ordering::Relaxed);
            // A connection left inside a transaction (an error mid-read) is not reused.
            if c.conn.is_autocommit() {
                let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(c);
                }
            }
        }
    }
}

/// Registers the SQL functions operators get in `Store::query`:
/// * `entity(text)`: an ECS entity id (16 hex digits, or a decimal number)
///   as the stored integer, so `WHERE entity = entity('00000000deadbeef')`
///   uses the index;
/// * `edr_ecs(id, time, partial, body)`: an event row as its ECS JSON document.
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("entity", 1, flags, |ctx| {
        let s: String = ctx.get(0)?;
        Ok(parse_entity(&s).map(|v| v as i64))
    })?;
    conn.create_scalar_function("edr_ecs", 4, flags, |ctx| {
        let id: i64 = ctx.get(0)?;
        let time: i64 = ctx.get(1)?;
        let partial: bool = ctx.get(2)?;
        let body = ctx.get_raw(3).as_blob().map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
        let ev = codec::decode_event(id as u64, time as u64, partial, body).map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
        Ok(edr_event::ecs::event_to_ecs(&ev, &Default::default()).to_string())
    })?;
    Ok(())
}

/// Reads an entity id as operators paste it: 16 hex digits (the ECS form) or a decimal number.
pub fn parse_entity(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.len() == 16 {
        if let Ok(v) = u64::from_str_radix(s, 16) {
            return Some(v);
        }
    }
    s.parse().ok()
}

/// Skips leading whitespace and SQL comments.
fn skip_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return sql;
        }
    }
}

/// True when `sql` has a `;` followed by anything but whitespace and
/// comments, outside string literals, quoted identifiers and comments.
fn has_second_statement(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        // A doubled quote is an escaped quote.
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'[' => {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                let mut rest = &sql[i + 1..];
                loop {
                    let next = skip_comments(rest).trim_start_matches(';');
                    if next.len() == rest.len() {
                        return !rest.trim().is_empty();
                    }
                    rest = next;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

fn to_json(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => {
            let mut s = String::with_capacity(b.len() * 2);
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            Value::String(s)
        }
    }
}

/// Runs an operator's query: one read-only SELECT/WITH statement.
pub(crate) fn run_query(pool: &ReadPool, sql: &str) -> Result<QueryResult, StoreError> {
    let body = skip_comments(sql);
    let first: String = body.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_lowercase();
    if first != "select" && first != "with" {
        let shown = if first.is_empty() { body.chars().take(20).collect::<String>() } else { first.to_uppercase() };
        return Err(StoreError::QueryRefused {
            reason: format!(
                "only a single SELECT (or WITH ... SELECT) statement is accepted, not `{shown}`; the views process, file, network, login, alert, action and incident are the query surface"
            ),
        });
    }
    if has_second_statement(sql) {
        return Err(StoreError::QueryRefused { reason: "more than one statement; send one SELECT at a time".into() });
    }
    let conn = pool.get()?;
    let mut stmt = match conn.prepare(sql) {
        Ok(s) => s,
        Err(rusqlite::Error::MultipleStatement) => {
            return Err(StoreError::QueryRefused { reason: "more than one statement; send one SELECT at a time".into() })
        }
        Err(e) => {
            if let Some(reason) = conn.denied() {
                return Err(StoreError::QueryRefused { reason });
            }
            return Err(StoreError::Sql { what: "invalid query".into(), source: e });
        }
    };
    if !stmt.readonly() {
        return Err(StoreError::QueryRefused { reason: "the statement would change the store; only reads are accepted".into() });
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let n = columns.len();
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut it = stmt.query([]).map_err(conn.err("running the query"))?;
    while let Some(row) = it.next().map_err(conn.err("running the query"))? {
        if rows.len() == pool.max_rows {
            truncated = true;
            break;
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(to_json(row.get_ref(i).map_err(conn.err("reading a query row"))?));
        }
        rows.push(out);
    }
    Ok(QueryResult { columns, rows, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_skipped_and_entities_parsed() {
        assert_eq!(skip_comments("  -- hi\n /* x */ select 1"), "select 1");
        assert_eq!(skip_comments("/* unterminated"), "");
        assert_eq!(parse_entity("00000000deadbeef"), Some(0xdead_beef));
        assert_eq!(parse_entity("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_entity("42"), Some(42));
        assert_eq!(parse_entity("nope"), None);
        assert_eq!(action_name(&AuthAction::CreateTable { table_name: "t" }), "CREATE TABLE");
        assert!(has_second_statement("SELECT 1; DROP TABLE events"));
        assert!(has_second_statement("SELECT 1;;SELECT 2"));
        assert!(!has_second_statement("SELECT 1;"));
        assert!(!has_second_statement("SELECT 1; ; /* x */ ;"));
        assert!(!has_second_statement("SELECT 1; -- trailing comment"));
        assert!(!has_second_statement("SELECT ';' AS \"a;b\", 'it''s; fine' /* ; */ -- ;"));
    }
}
