//! Saved hunt queries: a named SQL statement an operator keeps for the
//! fleet, run again from the console's hunt page or `edr fleet query`.
//!
//! They are kept in the JetStream key-value bucket [`BUCKET`] (one revision
//! per key, replicated with the NATS cluster), not on the server's disk. A
//! name is free text (what the console shows, so it is only ever inserted as
//! text); its key in the bucket is the name's UTF-8 bytes in hex, so no name
//! can form an illegal key, a wildcard or a path. Every change is in the audit
//! ([`Change::SavedQuery`]) with who made it.
//!
//! | method, path | role | what |
//! |---|---|---|
//! | `GET /api/v1/queries` | viewer | every saved query, by name: `{"queries": [{"name", "sql", "description", "saved_by", "saved_at"}]}` |
//! | `POST /api/v1/queries` | responder | `{"name", "sql", "description"?, "replace"?}`: saves one; a name already saved is refused (409) unless `replace` is true |
//! | `DELETE /api/v1/queries/{name}` | responder | deletes one (the name percent-encoded in the path); 404 when there is none |
//!
//! Viewers may list them and run them (a hunt is a viewer's right); keeping
//! and deleting what the whole team sees takes a responder.

use crate::api::{authorize, ok, parse_body, ApiError, ApiResult, AppState};
use crate::api_auth::Role;
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::Router;
use bytes::Bytes;
use edr_fleet_proto::msg::Change;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// The key-value bucket of saved queries.
pub const BUCKET: &str = "EDR_SAVED_QUERIES";
/// The longest name, in bytes of UTF-8.
pub const NAME_MAX_BYTES: usize = 100;
/// The longest description, in bytes of UTF-8.
pub const DESCRIPTION_MAX_BYTES: usize = 2000;
/// The longest SQL: what one signed `query` command may carry.
pub const SQL_MAX_BYTES: usize = edr_fleet_proto::command::QUERY_MAX_SQL_BYTES;
/// How many queries the bucket keeps at most.
pub const MAX_QUERIES: usize = 1000;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/queries", get(list).post(save)).route("/api/v1/queries/{name}", delete(remove))
}

/// One saved query, as kept in the bucket and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQuery {
    /// Its name (free text, shown as text).
    pub name: String,
    /// One read-only SQL statement over the record's views.
    pub sql: String,
    /// What it finds, when the operator said.
    #[serde(default)]
    pub description: String,
    /// Who saved it (the token's name or `console:USER`).
    pub saved_by: String,
    /// When, seconds since the epoch.
    pub saved_at: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveRequest {
    name: String,
    sql: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    replace: bool,
}

/// Why a name cannot be a saved query's name, if it cannot.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("give the query a name".into());
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(format!("the name is {} bytes; at most {NAME_MAX_BYTES}", name.len()));
    }
    if name == "." || name == ".." {
        return Err("the name is only dots (a path segment a browser would resolve)".into());
    }
    if name.trim() != name {
        return Err("the name starts or ends with white space".into());
    }
    if name.chars().any(char::is_control) {
        return Err("the name has a control character (a newline, tab, escape...)".into());
    }
    Ok(())
}

/// Why a save request is refused, if it is.
fn check(req: &SaveRequest) -> Result<(), String> {
    check_name(&req.name)?;
    if req.sql.trim().is_empty() {
        return Err("the SQL is empty".into());
    }
    if req.sql.len() > SQL_MAX_BYTES {
        return Err(format!("the SQL is {} bytes; a query command carries at most {SQL_MAX_BYTES}", req.sql.len()));
    }
    if req.description.len() > DESCRIPTION_MAX_BYTES {
        return Err(format!("the description is {} bytes; at most {DESCRIPTION_MAX_BYTES}", req.description.len()));
    }
    if req.description.chars().any(|c| c.is_control() && c != '\n') {
        return Err("the description has a control character other than a newline".into());
    }
    Ok(())
}

/// The name's key in the bucket: its bytes in hex (always a legal key).
fn key_of(name: &str) -> String {
    hex::encode(name.as_bytes())
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "nats", format!("the saved queries cannot be read or written: {e}"))
}

async fn bucket(s: &AppState) -> Result<Store, ApiError> {
    s.bus.kv_bucket(BUCKET, "saved hunt queries (edr fleet queries)").await.map_err(unavailable)
}

async fn read_one(store: &Store, key: &str) -> Result<Option<SavedQuery>, ApiError> {
    let Some(bytes) = store.get(key).await.map_err(unavailable)? else { return Ok(None) };
    match serde_json::from_slice(&bytes) {
        Ok(q) => Ok(Some(q)),
        Err(e) => {
            tracing::warn!(key, "a saved query in {BUCKET} is damaged and skipped: {e}");
            Ok(None)
        }
    }
}

async fn all(store: &Store) -> Result<Vec<SavedQuery>, ApiError> {
    let mut keys = store.keys().await.map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        if let Some(q) = read_one(store, &key.map_err(unavailable)?).await? {
            out.push(q);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn list(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Role::Viewer)?;
    ok(json!({"queries": all(&bucket(&s).await?).await?}))
}

async fn save(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = authorize(&s, &headers, Role::Responder)?;
    let req: SaveRequest = parse_body(&body)?;
    check(&req).map_err(ApiError::bad)?;
    let store = bucket(&s).await?;
    let key = key_of(&req.name);
    let query = SavedQuery { name: req.name, sql: req.sql, description: req.description, saved_by: who.name.clone(), saved_at: edr_fleet_proto::now_secs() };
    let value = Bytes::from(serde_json::to_vec(&query).unwrap_or_default());
    let action = if req.replace && read_one(&store, &key).await?.is_some() {
        store.put(&key, value).await.map_err(unavailable)?;
        "replaced"
    } else {
        if store.keys().await.map_err(unavailable)?.count().await >= MAX_QUERIES {
            return Err(ApiError::new(StatusCode::CONFLICT, "full", format!("{MAX_QUERIES} queries are saved already: delete some first")));
        }
        match store.create(&key, value).await {
            Ok(_) => "saved",
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "exists",
                    format!("a query named {:?} is saved already: choose another name, or replace it (\"replace\": true, `--replace`)", query.name),
                ))
            }
            Err(e) => return Err(unavailable(e)),
        }
    };
    s.bus.record(&s.index, &who.name, Change::SavedQuery { name: query.name.clone(), action: action.into(), sql: query.sql.clone() }).await?;
    tracing::info!(name = %query.name, by = %who.name, action, "saved query");
    ok(json!({"action": action, "query": query}))
}

async fn remove(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let who = authorize(&s, &headers, Role::Responder)?;
    check_name(&name).map_err(ApiError::bad)?;
    let store = bucket(&s).await?;
    let key = key_of(&name);
    let Some(query) = read_one(&store, &key).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no saved query named {name:?}: see GET /api/v1/queries")));
    };
    store.delete(&key).await.map_err(unavailable)?;
    s.bus.record(&s.index, &who.name, Change::SavedQuery { name: name.clone(), action: "deleted".into(), sql: query.sql }).await?;
    tracing::info!(name = %name, by = %who.name, "saved query deleted");
    ok(json!({"deleted": name}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_any_accepted_name_is_a_plain_hex_key() {
        for bad in ["", "   ", ".", "..", " lead", "trail ", "a\nb", "a\u{1b}[31m", "x".repeat(NAME_MAX_BYTES + 1).as_str()] {
            assert!(check_name(bad).is_err(), "{bad:?} refused");
        }
        for good in
            ["Top executables", "../../etc/passwd", "a.b.*.>", "$KV.EDR_SAVED_QUERIES.x", "<img src=x>", "π ≈ 3.14", "x".repeat(NAME_MAX_BYTES).as_str()]
        {
            assert!(check_name(good).is_ok(), "{good:?} accepted");
            let key = key_of(good);
            assert!(key.bytes().all(|b| b.is_ascii_hexdigit()) && hex::decode(&key).unwrap() == good.as_bytes(), "{good:?} -> {key}");
        }
    }

    #[test]
    fn sql_and_descriptions_are_bounded() {
        let req = |sql: &str, description: &str| SaveRequest { name: "n".into(), sql: sql.into(), description: description.into(), replace: false };
        assert!(check(&req("SELECT 1", "")).is_ok());
        assert!(check(&req(" \n", "")).unwrap_err().contains("empty"));
        assert!(check(&req(&"x".repeat(SQL_MAX_BYTES + 1), "")).unwrap_err().contains("at most"));
        assert!(check(&req("SELECT 1", &"d".repeat(DESCRIPTION_MAX_BYTES + 1))).unwrap_err().contains("description"));
        assert!(check(&req("SELECT 1", "two\nlines")).is_ok());
        assert!(check(&req("SELECT 1", "bell\u{7}")).is_err());
    }
}
