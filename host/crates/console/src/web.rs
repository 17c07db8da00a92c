//! The console's routes: login, logout, pages, assets, and the middleware
//! that checks CSRF tokens on cookie-authenticated changes.

use crate::session::{cookie_id, same, set_cookie, Sessions, CSRF_HEADER};
use crate::{pages, users, Console, ConsoleOptions};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use edr_datadir::DataDir;
use edr_fleet_proto::msg::Change;
use edr_fleet_server::api::AppState;
use edr_fleet_server::api_auth::Role;
use edr_fleet_server::api_session::{SessionAuth, SessionPrincipal};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// The actor name of a console user in the audit.
pub fn actor(user: &str) -> String {
    format!("console:{user}")
}

/// Resolves session cookies for the API (installed into [`AppState::sessions`]).
#[derive(Debug)]
struct CookieAuth {
    sessions: Arc<Sessions>,
    dir: DataDir,
}

impl SessionAuth for CookieAuth {
    fn authenticate(&self, headers: &HeaderMap) -> Option<Result<SessionPrincipal, String>> {
        let id = cookie_id(headers)?;
        let Some(s) = self.sessions.get(&id) else {
            return Some(Err("your console session has expired or is unknown: log in again at /console/login".into()));
        };
        Some(match users::role_of(&self.dir, &s.user) {
            Ok(Some(role)) => Ok(SessionPrincipal { actor: actor(&s.user), role }),
            Ok(None) => Err(format!("user {:?} no longer exists in users.json", s.user)),
            Err(e) => Err(format!("cannot read the users: {e}")),
        })
    }
}

/// What `edr server run` passes to [`edr_fleet_server::start_with`]: installs
/// the session authentication, merges the console's routes and wraps
/// everything (the API too) in the CSRF check.
pub fn extend(opts: ConsoleOptions) -> impl FnOnce(Arc<AppState>, Router) -> Router {
    move |app, api| {
        let sessions = Arc::new(Sessions::new(opts.limits));
        match DataDir::open_or_create(app.fleet.dir.path(), edr_datadir::agent_uid()) {
            Ok(dir) => {
                let _ = app.sessions.set(Arc::new(CookieAuth { sessions: sessions.clone(), dir }));
            }
            Err(e) => tracing::error!("the console's logins are off: cannot open the fleet directory: {e}"),
        }
        let secure = app.fleet.config.http.public_url.starts_with("https://");
        let console = Arc::new(Console { app, sessions, secure, max_age: opts.limits.absolute.as_secs() });
        let pages = Router::new()
            .route("/", get(|| async { Redirect::to("/console/hosts") }))
            .route("/console", get(|| async { Redirect::to("/console/hosts") }))
            .route("/console/login", get(login_page).post(login))
            .route("/console/logout", post(logout))
            .route("/console/assets/{name}", get(asset))
            .route("/console/hosts", get(|s, h| page(s, h, pages::Page::Hosts)))
            .route("/console/hosts/{host}", get(|s, h, Path(host): Path<String>| page(s, h, pages::Page::Host(host))))
            .route("/console/alerts", get(|s, h| page(s, h, pages::Page::Alerts)))
            .route("/console/alerts/{host}/{id}", get(|s, h, Path((host, id)): Path<(String, String)>| page(s, h, pages::Page::Alert(host, id))))
            .route("/console/hunt", get(|s, h| page(s, h, pages::Page::Hunt)))
            .route("/console/packs", get(|s, h| page(s, h, pages::Page::Packs)))
            .route("/console/audit", get(|s, h| page(s, h, pages::Page::Audit)))
            .with_state(console.clone());
        api.merge(pages).layer(axum::middleware::from_fn_with_state(console, csrf_guard))
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// A change (anything but GET/HEAD/OPTIONS) authenticated by a live session
/// cookie, without an `Authorization` header, must carry that session's
/// CSRF token in `X-CSRF-Token`; the login form is the one exception (it has
/// no session yet; `SameSite=Strict` keeps other sites' forms from it).
async fn csrf_guard(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if safe || req.uri().path() == "/console/login" || req.headers().contains_key(header::AUTHORIZATION) {
        return next.run(req).await;
    }
    let Some(session) = cookie_id(req.headers()).and_then(|id| c.sessions.get(&id)) else {
        // No live session: the API answers 401 itself.
        return next.run(req).await;
    };
    let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !same(sent, &session.csrf) {
        tracing::warn!(user = %session.user, path = %req.uri().path(), "a change without the session's CSRF token was refused");
        let why = if sent.is_empty() { "missing" } else { "does not match this session" };
        return json_error(StatusCode::FORBIDDEN, "csrf", &format!("the X-CSRF-Token header is {why}: reload the console page and try again"));
    }
    next.run(req).await
}

/// The logged-in user of a page request: name and role.
fn page_user(c: &Console, headers: &HeaderMap) -> Option<(String, Role, String)> {
    let s = c.sessions.get(&cookie_id(headers)?)?;
    let role = users::role_of(&c.app.fleet.dir, &s.user).ok().flatten()?;
    Some((s.user, role, s.csrf))
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    r
}

async fn page(State(c): State<Arc<Console>>, headers: HeaderMap, which: pages::Page) -> Response {
    let Some((user, role, csrf)) = page_user(&c, &headers) else { return Redirect::to("/console/login").into_response() };
    let ctx = pages::Ctx { user, role, csrf, command_pub: c.app.fleet.command_public_key(), fleet: c.app.fleet.config.name.clone() };
    html(StatusCode::OK, pages::render(&ctx, &which))
}

async fn login_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if page_user(&c, &headers).is_some() {
        return Redirect::to("/console/hosts").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn audit_login(c: &Console, user: &str, outcome: &str, from: &SocketAddr) {
    let change = Change::Login { user: user.chars().take(64).collect(), outcome: outcome.into(), from: from.ip().to_string() };
    if let Err(e) = c.app.bus.record(&c.app.index, &actor(&user.chars().take(64).collect::<String>()), change).await {
        tracing::error!("cannot audit a console login: {e}");
    }
}

/// Whether a login form came from another site: its `Origin` (sent by
/// browsers on every form POST) names a host other than the one asked.
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").map(|(_, rest)| rest) != Some(host)
}

async fn login(State(c): State<Arc<Console>>, ConnectInfo(from): ConnectInfo<SocketAddr>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    if cross_site(&headers) {
        // Login CSRF: another site logging the browser into an account of its choosing.
        return html(StatusCode::FORBIDDEN, pages::login(Some("This login form was sent from another site: log in from the console's own page.")));
    }
    let ip = format!("ip:{}", from.ip());
    let name_key = format!("user:{}", f.name.chars().take(64).collect::<String>());
    if let Some(wait) = c.sessions.locked_for(&name_key).or_else(|| c.sessions.locked_for(&ip)) {
        audit_login(&c, &f.name, "rate_limited", &from).await;
        let msg = format!("Too many failed logins: wait {wait} s and try again.");
        return html(StatusCode::TOO_MANY_REQUESTS, pages::login(Some(&msg)));
    }
    let dir = match DataDir::open_or_create(c.app.fleet.dir.path(), edr_datadir::agent_uid()) {
        Ok(d) => d,
        Err(e) => return html(StatusCode::INTERNAL_SERVER_ERROR, pages::login(Some(&format!("The server cannot read its directory: {e}")))),
    };
    let (name, password) = (f.name.clone(), f.password);
    let verdict = tokio::task::spawn_blocking(move || users::verify(&dir, &name, &password)).await;
    match verdict {
        Ok(Ok(Some(_role))) => {
            c.sessions.succeeded(&name_key);
            let (id, _) = c.sessions.create(&f.name);
            audit_login(&c, &f.name, "ok", &from).await;
            let mut r = Redirect::to("/console/hosts").into_response();
            let cookie = set_cookie(&id, c.secure, c.max_age);
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Ok(None)) => {
            c.sessions.failed(&name_key);
            c.sessions.failed(&ip);
            audit_login(&c, &f.name, "failed", &from).await;
            html(StatusCode::UNAUTHORIZED, pages::login(Some("Wrong name or password.")))
        }
        Ok(Err(e)) => html(StatusCode::INTERNAL_SERVER_ERROR, pages::login(Some(&format!("The server cannot check passwords: {e}")))),
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, pages::login(Some(&format!("The password check failed: {e}")))),
    }
}

async fn logout(State(c): State<Arc<Console>>, ConnectInfo(from): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    let Some(s) = cookie_id(&headers).and_then(|id| c.sessions.remove(&id)) else {
        return json_error(StatusCode::UNAUTHORIZED, "unauthenticated", "no console session to end");
    };
    audit_login(&c, &s.user, "logout", &from).await;
    let mut r = Json(json!({"logged_out": s.user})).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie("", c.secure, 0)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The embedded assets: nothing comes from elsewhere.
async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match name.as_str() {
        "console.css" => (include_bytes!("../assets/console.css"), "text/css; charset=utf-8"),
        "console.js" => (include_bytes!("../assets/console.js"), "text/javascript; charset=utf-8"),
        "favicon.svg" => (include_bytes!("../assets/favicon.svg"), "image/svg+xml"),
        _ => return json_error(StatusCode::NOT_FOUND, "not_found", "no such console asset"),
    };
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(kind).unwrap_or(HeaderValue::from_static("text/plain")));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}
