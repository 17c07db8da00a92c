//! Server-side sessions, their cookie, CSRF tokens, and the failed-login limit.
//!
//! A session id is 32 random bytes (hex) sent only in an `HttpOnly;
//! SameSite=Strict` cookie (`Secure` when the console's public URL is
//! `https://`); the server keeps the sha256 of the id, never the id, with
//! the user, a CSRF token (another 32 random bytes, given to the page and
//! required in `X-CSRF-Token` on every change) and two expiries: idle and
//! absolute. Sessions live in the server process's memory: a restart logs
//! everyone out, and server processes sharing an index do not share them.

use edr_fleet_server::api_auth::sha256_hex;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "edr_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Failed logins per user name (and per client address) tolerated in [`FAIL_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The window failed logins are counted in.
pub const FAIL_WINDOW: Duration = Duration::from_secs(300);

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user's login name.
    pub user: String,
    /// The CSRF token bound to this session.
    pub csrf: String,
    created: Instant,
    last: Instant,
}

/// How long sessions live.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Ended after this long without a request.
    pub idle: Duration,
    /// Ended this long after login, used or not.
    pub absolute: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { idle: Duration::from_secs(30 * 60), absolute: Duration::from_secs(12 * 3600) }
    }
}

/// The sessions of this server process, and recent failed logins.
#[derive(Debug)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
    limits: SessionLimits,
}

fn random_hex32() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source");
    hex::encode(b)
}

/// Compares two strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// An empty store with these limits.
    pub fn new(limits: SessionLimits) -> Self {
        Sessions { by_hash: Mutex::default(), failures: Mutex::default(), limits }
    }

    /// Starts a session for `user`: its id (for the cookie) and the session.
    pub fn create(&self, user: &str) -> (String, Session) {
        let id = random_hex32();
        let now = Instant::now();
        let s = Session { user: user.to_string(), csrf: random_hex32(), created: now, last: now };
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| !self.expired(s, now));
        map.insert(sha256_hex(&id), s.clone());
        (id, s)
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last) > self.limits.idle || now.duration_since(s.created) > self.limits.absolute
    }

    /// The live session with this id (its idle timer restarts); an expired one is ended.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let key = sha256_hex(id);
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(&key)?;
        if self.expired(s, now) {
            map.remove(&key);
            return None;
        }
        s.last = now;
        Some(s.clone())
    }

    /// Ends the session with this id.
    pub fn remove(&self, id: &str) -> Option<Session> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).remove(&sha256_hex(id))
    }

    /// Seconds to wait before `key` (a user name or an address) may try again, when over the limit.
    pub fn locked_for(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = f.get_mut(key)?;
        list.retain(|t| now.duration_since(*t) < FAIL_WINDOW);
        (list.len() >= MAX_FAILURES).then(|| list.first().map_or(1, |t| (FAIL_WINDOW - now.duration_since(*t)).as_secs().max(1)))
    }

    /// Counts a failed login against `key`.
    pub fn failed(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() > 100_000 {
            f.clear();
        }
        f.entry(key.to_string()).or_default().push(Instant::now());
    }

    /// Forgets the failures of `key` (after a good login).
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// The session id in a request's `Cookie` headers.
pub fn cookie_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')))
        .find(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// The `Set-Cookie` value starting a session (`max_age` seconds) or, with `id` empty, ending it.
pub fn set_cookie(id: &str, secure: bool, max_age: u64) -> String {
    let age = if id.is_empty() { 0 } else { max_age };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{}", if secure { "; Secure" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn sessions_expire_when_idle_and_ids_are_not_stored() {
        let s = Sessions::new(SessionLimits { idle: Duration::from_millis(200), absolute: Duration::from_secs(60) });
        let (id, sess) = s.create("alice");
        assert_eq!(id.len(), 64);
        assert_ne!(id, sess.csrf);
        assert!(!s.by_hash.lock().unwrap().contains_key(&id), "only the hash of the id is kept");
        assert_eq!(s.get(&id).unwrap().user, "alice");
        assert!(s.get(&"0".repeat(64)).is_none());
        std::thread::sleep(Duration::from_millis(300));
        assert!(s.get(&id).is_none(), "idle too long");
        let (id2, _) = s.create("bob");
        assert!(s.remove(&id2).is_some() && s.get(&id2).is_none());
    }

    #[test]
    fn failed_logins_lock_after_the_limit() {
        let s = Sessions::new(SessionLimits::default());
        for _ in 0..MAX_FAILURES - 1 {
            s.failed("alice");
        }
        assert_eq!(s.locked_for("alice"), None);
        s.failed("alice");
        assert!(s.locked_for("alice").is_some_and(|w| w > 200));
        s.succeeded("alice");
        assert_eq!(s.locked_for("alice"), None);
    }

    #[test]
    fn cookies_parse_strictly_and_are_set_with_their_flags() {
        let mut h = HeaderMap::new();
        let id = "ab".repeat(32);
        h.append("cookie", format!("other=1; {COOKIE}=zz; {COOKIE}={id}").parse().unwrap());
        assert_eq!(cookie_id(&h), Some(id.clone()));
        let mut bad = HeaderMap::new();
        bad.append("cookie", format!("{COOKIE}x={id}; {COOKIE}=<script>").parse().unwrap());
        assert_eq!(cookie_id(&bad), None);
        let c = set_cookie(&id, true, 60);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"), "{c}");
        assert!(!set_cookie(&id, false, 60).contains("Secure"));
        assert!(set_cookie("", false, 60).contains("Max-Age=0"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
