//! Capabilities: the host interfaces of the plugin contract a plugin may
//! import. A pack's manifest requests them (`edr-pack`), the operator's
//! policy grants a subset, and the runtime refuses a component importing
//! anything else (`edr-runtime`): one type, so the three cannot disagree.

use std::fmt;

/// One host interface of the contract (`edr:plugin/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `edr:plugin/log`: write to the agent's log.
    Log,
    /// `edr:plugin/clock`: read the wall clock.
    Clock,
    /// `edr:plugin/state`: persistent per-plugin key-value state.
    State,
    /// `edr:plugin/process`: process ancestry lookups.
    Process,
    /// `edr:plugin/respond`: request response actions.
    Respond,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 5] = [Capability::Log, Capability::Clock, Capability::State, Capability::Process, Capability::Respond];

    /// The interface name in the contract, in manifests and in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Clock => "clock",
            Capability::State => "state",
            Capability::Process => "process",
            Capability::Respond => "respond",
        }
    }

    /// Parses an interface name.
    pub fn parse(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for c in Capability::ALL {
            assert_eq!(Capability::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        assert_eq!(Capability::parse("network"), None);
    }
}
