//! The mapping from our events to the Sigma Linux taxonomy (Sysmon for Linux
//! field names), as borrowed, allocation-free [`rsigma_eval::Event`] views.
//!
//! See the crate documentation for the field table. Every field value borrows
//! the batch (or the detector's reusable command-line buffers); numbers are
//! handed to the engine as integers, booleans as the strings `"true"` /
//! `"false"` (what Sysmon writes and what Sigma rules compare against). A
//! field we cannot fill (unknown, or an empty string in the event) is absent,
//! so `Field: null` and `Field|exists: false` match it.

use edr_sdk::{EventBody, FileOp, NetworkOp, ProcessExec, Transport};
use edr_sigma_core::rsigma_eval::{Event as SigmaEventTrait, EventValue};
use serde_json::{Map, Value};

pub use edr_sigma_core::category::{Category, ABSENT_FIELDS, FILE_FIELDS, NETWORK_FIELDS, PROCESS_FIELDS};
use std::borrow::Cow;

/// The Sigma view of one event.
#[derive(Debug, Clone, Copy)]
pub enum SigmaEvent<'a> {
    /// `process_creation`.
    Process(ProcessFields<'a>),
    /// `file_event`, `file_delete` or `file_access`.
    File(FileFields<'a>),
    /// `network_connection`.
    Network(NetworkFields<'a>),
}

/// `process_creation` fields.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFields<'a> {
    /// `Image`: executable path.
    pub image: &'a str,
    /// `CommandLine`: argv joined by single spaces.
    pub command_line: &'a str,
    /// `CurrentDirectory`.
    pub current_directory: &'a str,
    /// `User`: user name (empty when unresolved).
    pub user: &'a str,
    /// `UserId`: real uid.
    pub uid: u32,
    /// `ProcessId`.
    pub pid: u32,
    /// `ParentImage`.
    pub parent_image: &'a str,
    /// `ParentCommandLine`.
    pub parent_command_line: &'a str,
    /// `ParentProcessId`.
    pub ppid: u32,
}

/// `file_event` / `file_delete` / `file_access` fields.
#[derive(Debug, Clone, Copy)]
pub struct FileFields<'a> {
    /// The category the operation maps to.
    pub category: Category,
    /// `FileOperation`: `create`, `modify`, `rename`, `chmod`, `delete` or `read`.
    pub operation: &'static str,
    /// `TargetFilename`: the path (the new path of a rename).
    pub target: &'a str,
    /// `SourceFilename`: the old path of a rename.
    pub source: Option<&'a str>,
    /// `Image`.
    pub image: Option<&'a str>,
    /// `ProcessId`.
    pub pid: Option<u32>,
    /// `UserId`.
    pub uid: Option<u32>,
    /// `st_mode`, where known (`FileMode`, `SetuidBit`, `SetgidBit`).
    pub mode: Option<u32>,
    /// `FileMode` as 4 octal digits (permission bits incl. setuid/setgid/sticky).
    mode_text: [u8; 4],
}

/// `network_connection` fields.
#[derive(Debug, Clone, Copy)]
pub struct NetworkFields<'a> {
    /// `Image`.
    pub image: Option<&'a str>,
    /// `ProcessId`.
    pub pid: Option<u32>,
    /// `UserId`.
    pub uid: Option<u32>,
    /// `Protocol`: `tcp` or `udp`.
    pub protocol: &'static str,
    /// `Initiated`: true for an outbound connect, false for an accepted one.
    pub initiated: bool,
    /// `SourceIp`.
    pub source_ip: &'a str,
    /// `SourcePort`.
    pub source_port: u16,
    /// `DestinationIp`.
    pub destination_ip: &'a str,
    /// `DestinationPort`.
    pub destination_port: u16,
}

/// Reusable buffers for the joined command lines, so that mapping an exec
/// does not allocate once they have grown to the longest command line seen.
#[derive(Debug, Default)]
pub struct Scratch {
    command_line: String,
    parent_command_line: String,
}

fn join_into<'s>(buf: &mut String, parts: impl Iterator<Item = &'s str>) {
    buf.clear();
    for (i, p) in parts.enumerate() {
        if i > 0 {
            buf.push(' ');
        }
        buf.push_str(p);
    }
}

impl Scratch {
    /// Fills the command-line buffers for `exec`.
    pub fn fill(&mut self, exec: &ProcessExec<'_>) {
        join_into(&mut self.command_line, exec.argv.iter());
        join_into(&mut self.parent_command_line, exec.parent_argv.iter());
    }
}

/// The category of a file operation, or `None` for operations no category
/// covers (`attrib`: owner, timestamps, extended attributes).
pub fn file_category(op: FileOp) -> Option<(Category, &'static str)> {
    match op {
        FileOp::Create => Some((Category::FileEvent, "create")),
        FileOp::Modify => Some((Category::FileEvent, "modify")),
        FileOp::Rename => Some((Category::FileEvent, "rename")),
        FileOp::Chmod => Some((Category::FileEvent, "chmod")),
        FileOp::Delete => Some((Category::FileDelete, "delete")),
        FileOp::Read => Some((Category::FileAccess, "read")),
        FileOp::Attrib => None,
    }
}

/// Maps an event to its Sigma view. For a process exec, `scratch` must have
/// been filled with [`Scratch::fill`] for that exec first. Returns `None` for
/// events no served category covers (exits, logins, listeners, `attrib`).
pub fn map_event<'a>(body: &EventBody<'a>, scratch: &'a Scratch) -> Option<SigmaEvent<'a>> {
    match body {
        EventBody::ProcessExec(x) => Some(SigmaEvent::Process(ProcessFields {
            image: x.exe,
            command_line: &scratch.command_line,
            current_directory: x.cwd,
            user: x.user,
            uid: x.uid,
            pid: x.pid,
            parent_image: x.parent_exe,
            parent_command_line: &scratch.parent_command_line,
            ppid: x.ppid,
        })),
        EventBody::File(f) => {
            let (category, operation) = file_category(f.op)?;
            let mut mode_text = [b'0'; 4];
            if let Some(m) = f.mode {
                for (i, shift) in [9u32, 6, 3, 0].into_iter().enumerate() {
                    mode_text[i] = b'0' + ((m >> shift) & 0o7) as u8;
                }
            }
            Some(SigmaEvent::File(FileFields {
                category,
                operation,
                target: f.path,
                source: if f.op == FileOp::Rename { f.old_path } else { None },
                image: f.exe,
                pid: f.pid,
                uid: f.uid,
                mode: f.mode,
                mode_text,
            }))
        }
        EventBody::Network(n) => {
            let initiated = match n.op {
                NetworkOp::Connect => true,
                NetworkOp::Accept => false,
                // Not a connection: a listener has no peer, and a close
                // (the end of a connection already mapped at its connect or
                // accept, with byte counts, which Sigma's network_connection
                // has no fields for) would match every connection rule twice.
                NetworkOp::Listen | NetworkOp::Close => return None,
            };
            // As in our ECS mapping: the source is the side that initiated.
            let ((source_ip, source_port), (destination_ip, destination_port)) =
                if initiated { ((n.local_ip, n.local_port), (n.remote_ip, n.remote_port)) } else { ((n.remote_ip, n.remote_port), (n.local_ip, n.local_port)) };
            Some(SigmaEvent::Network(NetworkFields {
                image: n.exe,
                pid: n.pid,
                uid: n.uid,
                protocol: match n.transport {
                    Transport::Tcp => "tcp",
                    Transport::Udp => "udp",
                },
                initiated,
                source_ip,
                source_port,
                destination_ip,
                destination_port,
            }))
        }
        EventBody::ProcessExit(_) | EventBody::Login(_) => None,
    }
}

fn s(v: &str) -> Option<EventValue<'_>> {
    if v.is_empty() {
        None
    } else {
        Some(EventValue::Str(Cow::Borrowed(v)))
    }
}

fn int(v: impl Into<i64>) -> Option<EventValue<'static>> {
    Some(EventValue::Int(v.into()))
}

fn flag(b: bool) -> Option<EventValue<'static>> {
    Some(EventValue::Str(Cow::Borrowed(if b { "true" } else { "false" })))
}

impl FileFields<'_> {
    /// `FileMode`: the permission bits as 4 octal digits, when the mode is known.
    pub fn mode_str(&self) -> Option<&str> {
        self.mode?;
        // Always ASCII octal digits.
        std::str::from_utf8(&self.mode_text).ok()
    }
}

impl<'a> SigmaEvent<'a> {
    /// The category this event belongs to.
    pub fn category(&self) -> Category {
        match self {
            SigmaEvent::Process(_) => Category::ProcessCreation,
            SigmaEvent::File(f) => f.category,
            SigmaEvent::Network(_) => Category::NetworkConnection,
        }
    }

    /// The value of a Sigma field, if set. Field names are matched exactly
    /// (Sysmon spelling), then ASCII case-insensitively.
    pub fn field(&self, name: &str) -> Option<EventValue<'_>> {
        match self.lookup(name) {
            Some(v) => Some(v),
            None => {
                let canonical = self.category().fields().iter().find(|f| f.eq_ignore_ascii_case(name) && **f != name)?;
                self.lookup(canonical)
            }
        }
    }

    fn lookup(&self, name: &str) -> Option<EventValue<'_>> {
        match self {
            SigmaEvent::Process(p) => match name {
                "Image" => s(p.image),
                "CommandLine" => s(p.command_line),
                "CurrentDirectory" => s(p.current_directory),
                "User" => s(p.user),
                "UserId" => int(p.uid),
                "ProcessId" => int(p.pid),
                "ParentImage" => s(p.parent_image),
                "ParentCommandLine" => s(p.parent_command_line),
                "ParentProcessId" => int(p.ppid),
                _ => None,
            },
            SigmaEvent::File(f) => match name {
                "TargetFilename" => s(f.target),
                "SourceFilename" => f.source.and_then(s),
                "Image" => f.image.and_then(s),
                "ProcessId" => f.pid.and_then(int),
                "UserId" => f.uid.and_then(int),
                "FileOperation" => s(f.operation),
                "FileMode" => f.mode_str().map(|t| EventValue::Str(Cow::Borrowed(t))),
                "SetuidBit" => f.mode.and_then(|m| flag(m & 0o4000 != 0)),
                "SetgidBit" => f.mode.and_then(|m| flag(m & 0o2000 != 0)),
                _ => None,
            },
            SigmaEvent::Network(n) => match name {
                "Image" => n.image.and_then(s),
                "ProcessId" => n.pid.and_then(int),
                "UserId" => n.uid.and_then(int),
                "Protocol" => s(n.protocol),
                "Initiated" => flag(n.initiated),
                "SourceIp" => s(n.source_ip),
                "SourcePort" => {
                    if n.source_ip.is_empty() {
                        None
                    } else {
                        int(n.source_port)
                    }
                }
                "SourceIsIpv6" => {
                    if n.source_ip.is_empty() {
                        None
                    } else {
                        flag(n.source_ip.contains(':'))
                    }
                }
                "DestinationIp" => s(n.destination_ip),
                "DestinationPort" => {
                    if n.destination_ip.is_empty() {
                        None
                    } else {
                        int(n.destination_port)
                    }
                }
                "DestinationIsIpv6" => {
                    if n.destination_ip.is_empty() {
                        None
                    } else {
                        flag(n.destination_ip.contains(':'))
                    }
                }
                _ => None,
            },
        }
    }

    /// Calls `visit` with every field that is set (name and value), in the
    /// order of [`Category::fields`]. Written out per kind rather than through
    /// [`SigmaEvent::field`]: the engine's candidate index calls it for every
    /// event.
    pub fn for_each_field(&self, visit: &mut dyn FnMut(&'static str, EventValue<'_>)) {
        let mut put = |name: &'static str, v: Option<EventValue<'_>>| {
            if let Some(v) = v {
                visit(name, v);
            }
        };
        match self {
            SigmaEvent::Process(p) => {
                put("Image", s(p.image));
                put("CommandLine", s(p.command_line));
                put("CurrentDirectory", s(p.current_directory));
                put("User", s(p.user));
                put("UserId", int(p.uid));
                put("ProcessId", int(p.pid));
                put("ParentImage", s(p.parent_image));
                put("ParentCommandLine", s(p.parent_command_line));
                put("ParentProcessId", int(p.ppid));
            }
            SigmaEvent::File(f) => {
                put("TargetFilename", s(f.target));
                put("SourceFilename", f.source.and_then(s));
                put("Image", f.image.and_then(s));
                put("ProcessId", f.pid.and_then(int));
                put("UserId", f.uid.and_then(int));
                put("FileOperation", s(f.operation));
                if let Some(m) = f.mode {
                    put("FileMode", f.mode_str().map(|t| EventValue::Str(Cow::Borrowed(t))));
                    put("SetuidBit", flag(m & 0o4000 != 0));
                    put("SetgidBit", flag(m & 0o2000 != 0));
                }
            }
            SigmaEvent::Network(n) => {
                put("Image", n.image.and_then(s));
                put("ProcessId", n.pid.and_then(int));
                put("UserId", n.uid.and_then(int));
                put("Protocol", s(n.protocol));
                put("Initiated", flag(n.initiated));
                if !n.source_ip.is_empty() {
                    put("SourceIp", s(n.source_ip));
                    put("SourcePort", int(n.source_port));
                    put("SourceIsIpv6", flag(n.source_ip.contains(':')));
                }
                if !n.destination_ip.is_empty() {
                    put("DestinationIp", s(n.destination_ip));
                    put("DestinationPort", int(n.destination_port));
                    put("DestinationIsIpv6", flag(n.destination_ip.contains(':')));
                }
            }
        }
    }

    /// Calls `visit` with every string-valued field that is set.
    fn for_each_str(&self, visit: &mut dyn FnMut(&str)) {
        self.for_each_field(&mut |_, v| {
            if let EventValue::Str(s) = v {
                visit(&s);
            }
        });
    }
}

impl SigmaEventTrait for SigmaEvent<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        self.field(path)
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        let mut found = false;
        self.for_each_str(&mut |v| found = found || pred(v));
        found
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        let mut out = Vec::new();
        self.for_each_field(&mut |_, v| {
            if let EventValue::Str(s) = v {
                out.push(Cow::Owned(s.into_owned()));
            }
        });
        out
    }

    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        self.for_each_str(visit);
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        self.for_each_field(&mut |name, v| {
            m.insert(name.to_string(), v.to_json());
        });
        Value::Object(m)
    }

    fn visit_top_level_keys(&self, visit: &mut dyn FnMut(&str)) -> bool {
        self.for_each_field(&mut |name, _| visit(name));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Some(c));
            assert_eq!(Category::ALL[c.index()], c);
        }
        assert_eq!(Category::parse(" File_Event "), Some(Category::FileEvent));
        assert_eq!(Category::parse("auditd"), None);
    }

    #[test]
    fn enumerated_fields_agree_with_lookup() {
        let scratch = Scratch { command_line: "a b".into(), parent_command_line: String::new() };
        let p = SigmaEvent::Process(ProcessFields {
            image: "/a",
            command_line: &scratch.command_line,
            current_directory: "",
            user: "u",
            uid: 1,
            pid: 2,
            parent_image: "/p",
            parent_command_line: &scratch.parent_command_line,
            ppid: 3,
        });
        let mut seen = Vec::new();
        p.for_each_field(&mut |name, v| {
            assert_eq!(p.field(name), Some(v), "{name}");
            seen.push(name);
        });
        let expected: Vec<&str> = PROCESS_FIELDS.iter().copied().filter(|f| !matches!(*f, "CurrentDirectory" | "ParentCommandLine")).collect();
        assert_eq!(seen, expected, "empty strings are absent");
        assert_eq!(p.field("commandline"), Some(EventValue::Str(Cow::Borrowed("a b"))), "case-insensitive fallback");
        assert_eq!(p.field("TargetFilename"), None);

        // File and network views built from SDK-shaped bodies.
        let check = |e: SigmaEvent<'_>, expected: &[&str]| {
            let mut seen = Vec::new();
            e.for_each_field(&mut |name, v| {
                assert_eq!(e.field(name), Some(v), "{name}");
                seen.push(name);
            });
            assert_eq!(seen, expected);
            for name in e.category().fields() {
                assert_eq!(e.field(name).is_some(), seen.contains(name), "{name}");
            }
        };
        let mut mode_text = [b'0'; 4];
        mode_text.copy_from_slice(b"4755");
        let f = FileFields {
            category: Category::FileEvent,
            operation: "chmod",
            target: "/t",
            source: None,
            image: Some("/i"),
            pid: None,
            uid: Some(0),
            mode: Some(0o104755),
            mode_text,
        };
        assert_eq!(f.mode_str(), Some("4755"));
        check(SigmaEvent::File(f), &["TargetFilename", "Image", "UserId", "FileOperation", "FileMode", "SetuidBit", "SetgidBit"]);
        let n = NetworkFields {
            image: None,
            pid: Some(1),
            uid: None,
            protocol: "tcp",
            initiated: true,
            source_ip: "",
            source_port: 0,
            destination_ip: "::1",
            destination_port: 22,
        };
        check(SigmaEvent::Network(n), &["ProcessId", "Protocol", "Initiated", "DestinationIp", "DestinationPort", "DestinationIsIpv6"]);
    }

    #[test]
    fn absent_fields_are_not_mapped() {
        for (name, _) in ABSENT_FIELDS {
            for c in Category::ALL {
                assert!(!c.fields().contains(name), "{name} is both mapped and absent");
            }
        }
    }
}
