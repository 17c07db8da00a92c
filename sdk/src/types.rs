//! The contract's types, with conveniences for detection code.

pub use crate::bindings::edr::plugin::types::{
    Action, Config, DataFile, Decision, Event, EventBody, EventKind, FileEvent, FileOp, Finding,
    KillTarget, LogLevel, LoginEvent, NetworkEvent, NetworkOp, PluginInfo, ProcessExec, ProcessExit,
    ProcessInfo, Severity, Transport,
};

use crate::matchers::basename;

impl Event {
    /// The kind of this event.
    pub fn kind(&self) -> EventKind {
        match self.body {
            EventBody::ProcessExec(_) => EventKind::ProcessExec,
            EventBody::ProcessExit(_) => EventKind::ProcessExit,
            EventBody::File(_) => EventKind::File,
            EventBody::Network(_) => EventKind::Network,
            EventBody::Login(_) => EventKind::Login,
        }
    }

    /// The exec record, if this is a process exec.
    pub fn exec(&self) -> Option<&ProcessExec> {
        match &self.body {
            EventBody::ProcessExec(e) => Some(e),
            _ => None,
        }
    }

    /// The exit record, if this is a process exit.
    pub fn exit(&self) -> Option<&ProcessExit> {
        match &self.body {
            EventBody::ProcessExit(e) => Some(e),
            _ => None,
        }
    }

    /// The file record, if this is a file event.
    pub fn file(&self) -> Option<&FileEvent> {
        match &self.body {
            EventBody::File(e) => Some(e),
            _ => None,
        }
    }

    /// The network record, if this is a network event.
    pub fn network(&self) -> Option<&NetworkEvent> {
        match &self.body {
            EventBody::Network(e) => Some(e),
            _ => None,
        }
    }

    /// The login record, if this is a login event.
    pub fn login(&self) -> Option<&LoginEvent> {
        match &self.body {
            EventBody::Login(e) => Some(e),
            _ => None,
        }
    }
}

impl ProcessExec {
    /// File name of the executable (`bash` for `/usr/bin/bash`).
    pub fn name(&self) -> &str {
        basename(&self.exe)
    }

    /// File name of the parent's executable.
    pub fn parent_name(&self) -> &str {
        basename(&self.parent_exe)
    }

    /// The arguments joined by spaces, as ECS `process.command_line`.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }

    /// The parent's arguments joined by spaces.
    pub fn parent_command_line(&self) -> String {
        self.parent_argv.join(" ")
    }

    /// The argument after the first occurrence of `flag` (e.g. the code after `-c`).
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        let pos = self.argv.iter().skip(1).position(|a| a == flag)?;
        self.argv.get(pos + 2).map(String::as_str)
    }

    /// True when any ancestor's executable file name satisfies `pred`.
    pub fn any_ancestor(&self, mut pred: impl FnMut(&str) -> bool) -> bool {
        self.ancestry.iter().any(|exe| pred(basename(exe)))
    }
}

impl FileEvent {
    /// File name of the path.
    pub fn name(&self) -> &str {
        basename(&self.path)
    }

    /// File name of the writing process's executable, if known.
    pub fn process_name(&self) -> Option<&str> {
        self.exe.as_deref().map(basename)
    }
}

impl NetworkEvent {
    /// File name of the process's executable, if known.
    pub fn process_name(&self) -> Option<&str> {
        self.exe.as_deref().map(basename)
    }

    /// True when the remote address is loopback or unspecified.
    pub fn remote_is_local(&self) -> bool {
        let ip = self.remote_ip.as_str();
        ip.is_empty() || ip.starts_with("127.") || ip == "::1" || ip == "0.0.0.0" || ip == "::" || ip.starts_with("::ffff:127.")
    }
}

impl Config {
    /// The value of a setting.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean setting (`true`/`false`/`1`/`0`/`yes`/`no`), or `default`.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                other => Err(format!("setting `{key}`: `{other}` is not a boolean")),
            },
        }
    }

    /// A comma-separated list setting, trimmed, empty items dropped.
    pub fn get_list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The content of a data file shipped with the pack.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|f| f.name == name).map(|f| f.content.as_slice())
    }
}

impl Finding {
    /// Adds a piece of evidence.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.evidence.push((key.into(), value.into()));
        self
    }
}

impl Severity {
    /// The Sigma level name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}
