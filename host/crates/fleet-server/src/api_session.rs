//! A second way to authenticate API requests, besides API tokens: the web
//! console's session cookie. The server only asks the installed
//! [`SessionAuth`] (`edr-console` installs one) who a request without an
//! `Authorization` header belongs to; roles are then enforced exactly as for
//! tokens. CSRF for cookie-authenticated changes is checked by the console's
//! middleware, which wraps the whole router ([`crate::start_with`]).

use crate::api_auth::Role;
use axum::http::HeaderMap;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPrincipal {
    /// Recorded as the actor of every change (`console:NAME`).
    pub actor: String,
    /// The user's current role.
    pub role: Role,
}

/// Resolves a request's session (a cookie) to a principal.
pub trait SessionAuth: Send + Sync + std::fmt::Debug {
    /// `None`: the request carries no session at all; `Some(Err(message))`:
    /// it carries one that is unknown or expired (the message says what to do).
    fn authenticate(&self, headers: &HeaderMap) -> Option<Result<SessionPrincipal, String>>;
}
