//! Hostile fixture: a detector importing an interface outside any contract.
//! The agent must refuse to load it, naming the import.

wit_bindgen::generate!({ path: "wit", world: "hostile:unknown-import/plugin", generate_all });

use edr::plugin::types::EventKind;

struct RawSyscaller;

impl Guest for RawSyscaller {
    fn init(_config: Config) -> Result<PluginInfo, String> {
        Ok(PluginInfo {
            name: "hostile-unknown-import".into(),
            version: "0.0.0".into(),
            description: String::new(),
            subscriptions: vec![EventKind::ProcessExec],
        })
    }

    fn on_events(_text: String, _lists: Vec<u32>, events: Vec<Event>) -> Vec<Finding> {
        std::hint::black_box(edr_internal::host::raw_syscall::syscall(62, &[events.len() as u64, 9]));
        Vec::new()
    }
}

export!(RawSyscaller);
