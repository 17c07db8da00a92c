//! The pages: server-rendered shells (maud escapes every value it inserts)
//! that the embedded script fills from the `/api/v1` JSON API. Nothing is
//! loaded from elsewhere.

use edr_fleet_server::api_auth::Role;
use maud::{html, Markup, DOCTYPE};

/// The logged-in user's context, put into every page.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Login name.
    pub user: String,
    /// Role.
    pub role: Role,
    /// The session's CSRF token (the script sends it on every change).
    pub csrf: String,
    /// The fleet's command-signing public key, hex (the page checks a loaded key against it).
    pub command_pub: String,
    /// The fleet's name.
    pub fleet: String,
}

/// Which page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// Every host.
    Hosts,
    /// One host: its details, alerts, live view and response.
    Host(String),
    /// The alert queue with its charts.
    Alerts,
    /// One alert (host, id).
    Alert(String, String),
    /// Fleet-wide hunts.
    Hunt,
    /// Pack rollouts: each host's state, halt and roll back.
    Packs,
    /// The audit log.
    Audit,
}

impl Page {
    fn name(&self) -> &'static str {
        match self {
            Page::Hosts => "hosts",
            Page::Host(_) => "host",
            Page::Alerts => "alerts",
            Page::Alert(..) => "alert",
            Page::Hunt => "hunt",
            Page::Packs => "packs",
            Page::Audit => "audit",
        }
    }

    fn title(&self) -> String {
        match self {
            Page::Hosts => "Hosts".into(),
            Page::Host(h) => format!("Host {h}"),
            Page::Alerts => "Alerts".into(),
            Page::Alert(h, id) => format!("Alert {h}:{id}"),
            Page::Hunt => "Hunt".into(),
            Page::Packs => "Packs".into(),
            Page::Audit => "Audit".into(),
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · edr console" }
        link rel="icon" href="/console/assets/favicon.svg";
        link rel="stylesheet" href="/console/assets/console.css";
    }
}

/// The login page, with an error message after a failed attempt.
pub fn login(error: Option<&str>) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head("Log in")) }
            body.login data-page="login" {
                main.login-box {
                    h1 { "edr console" }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form method="post" action="/console/login" {
                        label { "Name" input name="name" id="name" autocomplete="username" required autofocus; }
                        label { "Password" input name="password" id="password" type="password" autocomplete="current-password" required; }
                        button type="submit" id="login" { "Log in" }
                    }
                    p.hint { "Accounts: " code { "edr server user add NAME --role viewer|responder|admin" } }
                }
            }
        }
    }
    .into_string()
}

fn nav(ctx: &Ctx, page: &Page) -> Markup {
    let items = [("hosts", "Hosts"), ("alerts", "Alerts"), ("hunt", "Hunt"), ("packs", "Packs"), ("audit", "Audit")];
    let current = match page {
        Page::Host(_) => "hosts",
        Page::Alert(..) => "alerts",
        p => p.name(),
    };
    html! {
        nav.top {
            span.brand { "edr · " (ctx.fleet) }
            @for (id, label) in items {
                a href={ "/console/" (id) } class=@if id == current { "current" } @else { "" } { (label) }
            }
            span.spacer {}
            span.who { (ctx.user) " " span class={ "role role-" (ctx.role.as_str()) } { (ctx.role.as_str()) } }
            button #logout type="button" { "Log out" }
        }
    }
}

fn body(page: &Page) -> Markup {
    match page {
        Page::Hosts => html! {
            h1 { "Hosts" }
            div.toolbar {
                input #filter type="search" placeholder="filter: name, OS, version, ...";
                select #state-filter { option value="" { "any state" } @for s in ["online", "offline", "isolated", "never-seen"] { option value=(s) { (s) } } }
            }
            table #hosts.grid { thead {} tbody {} }
        },
        Page::Host(h) => html! {
            h1 { "Host " span #host-name { (h) } }
            div #host-detail.cards {}
            section { h2 { "Respond" } div #respond {} }
            section { h2 { "Live view" } div #live {} }
            section { h2 { "Connections" } div #connections {} }
            section { h2 { "Recent alerts" } table #host-alerts.grid { thead {} tbody {} } }
        },
        Page::Alerts => html! {
            h1 { "Alerts" }
            div #charts.charts {}
            div.toolbar {
                select #f-severity { option value="" { "any severity" } @for s in ["critical", "high", "medium", "low", "info"] { option value=(s) { (s) } } }
                select #f-state { option value="" { "any state" } @for s in ["new", "acknowledged", "closed"] { option value=(s) { (s) } } }
                input #f-host type="search" placeholder="host";
                input #f-rule type="search" placeholder="rule";
                input #f-technique type="search" placeholder="ATT&CK technique";
            }
            div.toolbar.bulk {
                span #selected-count { "0 selected" }
                input #bulk-note type="text" placeholder="note (kept in the audit)";
                button #bulk-ack type="button" { "Acknowledge" }
                button #bulk-close type="button" { "Close" }
                span #bulk-result {}
            }
            table #alerts.grid { thead {} tbody {} }
        },
        Page::Alert(h, id) => html! {
            h1 { "Alert " (h) ":" (id) }
            div #alert-detail {}
            section { h2 { "Storyline" } div #storyline {} }
            section { h2 { "Triage" } div #triage {} }
            section { h2 { "Respond" } div #respond {} }
            section { h2 { "ECS document" } pre #ecs {} }
        },
        Page::Hunt => html! {
            h1 { "Hunt" }
            div #key-panel {}
            form #hunt-form {
                label { "SQL (one read-only statement over process, file, network, login, alert, action, incident)"
                    textarea #sql rows="4" { "SELECT exe, count(*) AS n FROM process GROUP BY exe ORDER BY n DESC LIMIT 20" } }
                div #hunt-hosts {}
                label.inline { "rows per host " input #limit type="number" value="1000" min="1" max="10000"; }
                button #run-hunt type="submit" { "Run" }
            }
            section #saved {
                h2 { "Saved queries" }
                div #saved-role {}
                div.toolbar {
                    input #save-name type="text" placeholder="name" maxlength="100";
                    input #save-desc type="text" placeholder="what it finds (optional)" maxlength="2000";
                    label.inline { input #save-replace type="checkbox"; " replace one of that name" }
                    button #save-query type="button" { "Save the SQL above" }
                    span #save-status {}
                }
                table #saved-queries.grid { thead {} tbody {} }
            }
            div #hunt-status {}
            div.toolbar { button #export-csv type="button" disabled { "Export CSV" } button #export-json type="button" disabled { "Export JSON" } }
            table #hunt-result.grid { thead {} tbody {} }
        },
        Page::Packs => html! {
            h1 { "Packs" }
            p.hint { "Published with " code { "edr fleet pack publish" } ". Each host verifies the publisher's signature itself; the states are the hosts' answers, cross-checked with their heartbeats." }
            div #key-panel {}
            table #packs.grid { thead {} tbody {} }
            section #pack-detail hidden {
                h2 { "Rollout of " span #pack-name {} }
                div #pack-summary {}
                div #pack-actions {}
                div #pack-result {}
                table #pack-hosts.grid { thead {} tbody {} }
            }
        },
        Page::Audit => html! {
            h1 { "Audit" }
            table #audit.grid { thead {} tbody {} }
        },
    }
}

/// A page of the console for the logged-in user.
pub fn render(ctx: &Ctx, page: &Page) -> String {
    let (host, alert) = match page {
        Page::Host(h) => (h.as_str(), ""),
        Page::Alert(h, id) => (h.as_str(), id.as_str()),
        _ => ("", ""),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head(&page.title()))
                meta name="csrf-token" content=(ctx.csrf);
                meta name="command-pub" content=(ctx.command_pub);
                script src="/console/assets/console.js" defer {}
            }
            body data-page=(page.name()) data-role=(ctx.role.as_str()) data-user=(ctx.user) data-host=(host) data-alert=(alert) {
                (nav(ctx, page))
                main { (body(page)) div #error.error role="alert" hidden {} }
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_in_pages_are_escaped() {
        let ctx = Ctx { user: "a\"<b>".into(), role: Role::Viewer, csrf: "c".into(), command_pub: "k".into(), fleet: "<script>x</script>".into() };
        let out = render(&ctx, &Page::Alert("<img src=x onerror=alert(1)>".into(), "1\"".into()));
        assert!(!out.contains("<img") && !out.contains("<script>x") && !out.contains("a\"<b>"), "{out}");
        assert!(out.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(login(Some("<b>bad</b>")).contains("&lt;b&gt;bad"));
    }
}
