//! What the agent offers a plugin: logging, the clock, persistent key-value
//! state, process ancestry and response actions.
//!
//! Each function is a capability that the plugin's pack must request in its
//! manifest (`log`, `clock`, `state`, `process`, `respond`); a plugin that
//! uses one it was not granted is refused at load with the name of the import.
//!
//! Natively (under [`crate::testing::Harness`]) these calls go to an
//! in-memory stand-in, so tests can inspect logs, state and requested actions.

use crate::types::{Action, Decision, LogLevel, ProcessInfo};

#[cfg(target_arch = "wasm32")]
use crate::bindings::edr::plugin as wit;

/// Writes a line to the agent's log, attributed to this plugin. The agent
/// caps log volume per plugin and counts what it drops.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    wit::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    native::with(|h| h.logs.push((level, message.to_string())));
}

/// Logs at info level: `edr_sdk::info!("seen {} events", n)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Info, &::std::format!($($arg)*)) };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Warn, &::std::format!($($arg)*)) };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::host::log($crate::LogLevel::Debug, &::std::format!($($arg)*)) };
}

/// Current time in nanoseconds since the Unix epoch.
pub fn now() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return wit::clock::now();
    #[cfg(not(target_arch = "wasm32"))]
    native::with(|h| h.now)
}

/// Per-plugin key-value state that survives plugin updates and agent restarts.
pub mod state {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::edr::plugin::state as wit;

    /// The value stored under `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        #[cfg(target_arch = "wasm32")]
        return wit::get(key);
        #[cfg(not(target_arch = "wasm32"))]
        super::native::with(|h| h.state.get(key).cloned())
    }

    /// Stores `value` under `key`. Fails when the plugin is over its quota.
    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        return wit::set(key, value);
        #[cfg(not(target_arch = "wasm32"))]
        super::native::with(|h| {
            h.state.insert(key.to_string(), value.to_vec());
            Ok(())
        })
    }

    /// Removes `key`.
    pub fn delete(key: &str) {
        #[cfg(target_arch = "wasm32")]
        wit::delete(key);
        #[cfg(not(target_arch = "wasm32"))]
        super::native::with(|h| {
            h.state.remove(key);
        })
    }
}

/// The process with this entity id followed by its ancestors, parent first.
pub fn ancestry(entity_id: u64) -> Vec<ProcessInfo> {
    #[cfg(target_arch = "wasm32")]
    return wit::process::ancestry(entity_id);
    #[cfg(not(target_arch = "wasm32"))]
    native::with(|h| h.ancestry(entity_id))
}

/// Asks the agent to take a response action. The agent's policy decides;
/// every request is audited with `reason`.
pub fn request(action: &Action, reason: &str) -> Decision {
    #[cfg(target_arch = "wasm32")]
    return wit::respond::request(action, reason);
    #[cfg(not(target_arch = "wasm32"))]
    native::with(|h| {
        h.actions.push((action.clone(), reason.to_string()));
        h.decision
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native {
    //! The in-memory stand-in for the agent used by the native test harness.
    use crate::types::{Action, Decision, LogLevel, ProcessInfo};
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Everything the stand-in host records.
    #[derive(Debug)]
    pub struct MockHost {
        pub logs: Vec<(LogLevel, String)>,
        pub state: HashMap<String, Vec<u8>>,
        pub now: u64,
        pub processes: HashMap<u64, (ProcessInfo, u64)>,
        pub actions: Vec<(Action, String)>,
        pub decision: Decision,
    }

    impl Default for MockHost {
        fn default() -> Self {
            Self {
                logs: Vec::new(),
                state: HashMap::new(),
                now: 1_700_000_000_000_000_000,
                processes: HashMap::new(),
                actions: Vec::new(),
                decision: Decision::Simulated,
            }
        }
    }

    impl MockHost {
        pub fn ancestry(&self, entity_id: u64) -> Vec<ProcessInfo> {
            edr_ancestry::walk(entity_id, |id| self.processes.get(&id).map(|(info, parent)| (info.clone(), *parent)))
        }
    }

    thread_local! {
        static HOST: RefCell<MockHost> = RefCell::new(MockHost::default());
    }

    pub fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
        HOST.with(|h| f(&mut h.borrow_mut()))
    }
}
