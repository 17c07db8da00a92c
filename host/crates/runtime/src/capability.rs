//! Capabilities: the host imports a plugin may use.

use std::collections::BTreeSet;
use std::fmt;

pub use edr_event::Capability;

/// The capabilities granted to one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants(BTreeSet<Capability>);

impl Grants {
    /// Every capability except `respond` (the default for detection plugins:
    /// response is opt-in per pack).
    pub fn detection_default() -> Self {
        Self([Capability::Log, Capability::Clock, Capability::State, Capability::Process].into_iter().collect())
    }

    /// Every capability.
    pub fn all() -> Self {
        Self(Capability::ALL.into_iter().collect())
    }

    /// Exactly these capabilities.
    pub fn only(caps: impl IntoIterator<Item = Capability>) -> Self {
        Self(caps.into_iter().collect())
    }

    /// Whether `cap` is granted.
    pub fn allows(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    /// The granted capabilities.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|c| c.as_str()).collect();
        f.write_str(&names.join(", "))
    }
}

/// An import name split into its parts: `edr:plugin/log@0.1.0`.
pub(crate) struct ImportName<'a> {
    pub package: &'a str,
    pub interface: &'a str,
    pub version: Option<&'a str>,
}

impl<'a> ImportName<'a> {
    pub fn parse(name: &'a str) -> ImportName<'a> {
        let (path, version) = match name.split_once('@') {
            Some((p, v)) => (p, Some(v)),
            None => (name, None),
        };
        let (package, interface) = path.rsplit_once('/').unwrap_or((path, ""));
        ImportName { package, interface, version }
    }
}
