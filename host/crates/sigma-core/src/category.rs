//! The Sigma logsource categories this agent serves (always with
//! `product: linux`) and the Sysmon for Linux fields it sets for each: what a
//! rule may use, and what it may use in vain ([`ABSENT_FIELDS`]).

use std::fmt;

/// A Sigma logsource category this plugin serves (always with `product: linux`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// A program started (our process exec).
    ProcessCreation,
    /// A file was created, written, renamed into place or had its mode changed.
    FileEvent,
    /// A file was deleted.
    FileDelete,
    /// A file was opened for reading (our own category; Sigma has no Linux one).
    FileAccess,
    /// An outbound (`connect`) or inbound (`accept`) connection.
    NetworkConnection,
}

impl Category {
    /// Every category, in a stable order.
    pub const ALL: [Category; 5] = [Category::ProcessCreation, Category::FileEvent, Category::FileDelete, Category::FileAccess, Category::NetworkConnection];

    /// The Sigma `logsource.category` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::ProcessCreation => "process_creation",
            Category::FileEvent => "file_event",
            Category::FileDelete => "file_delete",
            Category::FileAccess => "file_access",
            Category::NetworkConnection => "network_connection",
        }
    }

    /// Parses a `logsource.category` value (ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Position in [`Category::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The fields this plugin can set for events of this category.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Category::ProcessCreation => PROCESS_FIELDS,
            Category::FileEvent | Category::FileDelete | Category::FileAccess => FILE_FIELDS,
            Category::NetworkConnection => NETWORK_FIELDS,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fields set on `process_creation` events.
pub const PROCESS_FIELDS: &[&str] =
    &["Image", "CommandLine", "CurrentDirectory", "User", "UserId", "ProcessId", "ParentImage", "ParentCommandLine", "ParentProcessId"];

/// Fields set on `file_event`, `file_delete` and `file_access` events.
pub const FILE_FIELDS: &[&str] = &["TargetFilename", "SourceFilename", "Image", "ProcessId", "UserId", "FileOperation", "FileMode", "SetuidBit", "SetgidBit"];

/// Fields set on `network_connection` events.
pub const NETWORK_FIELDS: &[&str] = &[
    "Image",
    "ProcessId",
    "UserId",
    "Protocol",
    "Initiated",
    "SourceIp",
    "SourcePort",
    "SourceIsIpv6",
    "DestinationIp",
    "DestinationPort",
    "DestinationIsIpv6",
];

/// Fields of the Sysmon for Linux taxonomy that we never set, with why.
/// Rules using them still load; a selection on them never matches.
pub const ABSENT_FIELDS: &[(&str, &str)] = &[
    ("OriginalFileName", "PE version metadata; Linux executables have none"),
    ("Product", "PE version metadata; Linux executables have none"),
    ("Description", "PE version metadata; Linux executables have none"),
    ("Company", "PE version metadata; Linux executables have none"),
    ("FileVersion", "PE version metadata; Linux executables have none"),
    ("LogonId", "no logon session id in our events"),
    ("LogonGuid", "no logon session id in our events"),
    ("TerminalSessionId", "no session id in our events"),
    ("IntegrityLevel", "a Windows concept"),
    ("Hashes", "the collector does not hash executables"),
    ("ProcessGuid", "not collected (our entity ids are not GUIDs)"),
    ("ParentProcessGuid", "not collected (our entity ids are not GUIDs)"),
    ("ParentUser", "the parent's user is not in the exec event"),
    ("DestinationHostname", "connections carry addresses only, no DNS name"),
    ("SourceHostname", "connections carry addresses only, no DNS name"),
    ("DestinationPortName", "no service-name lookup"),
    ("SourcePortName", "no service-name lookup"),
    ("CreationUtcTime", "file creation time is not collected"),
];
