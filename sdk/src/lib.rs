//! # edr-sdk: write `edr` detection plugins in plain Rust
//!
//! A plugin is a type that implements [`Detector`], exported with
//! [`export_detector!`]. The SDK hides the WebAssembly component model: you
//! never touch `wit-bindgen`, and the same code runs natively under
//! [`testing::Harness`] so `cargo test` exercises your logic on JSONL fixtures
//! without Wasm.
//!
//! ```
//! use edr_sdk::prelude::*;
//!
//! /// Flags `curl` or `wget` writing into /tmp.
//! #[derive(Default)]
//! pub struct DownloadToTmp;
//!
//! const RULE: Rule = Rule {
//!     id: "example.download-to-tmp",
//!     title: "Download into /tmp",
//!     severity: Severity::Medium,
//!     techniques: &["T1105"],
//!     author: "Example Corp",
//!     description: "curl or wget writing its output under /tmp.",
//! };
//!
//! impl Detector for DownloadToTmp {
//!     const NAME: &'static str = "download-to-tmp";
//!     const VERSION: &'static str = "0.1.0";
//!     const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];
//!
//!     fn init(_config: &Config) -> Result<Self, String> {
//!         Ok(Self)
//!     }
//!
//!     fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
//!         let Some(exec) = event.exec() else { return };
//!         if matches!(exec.name(), "curl" | "wget")
//!             && exec.argv.iter().any(|a| starts_with_ci(a, "/tmp/"))
//!         {
//!             findings.report(&RULE, event, format!("{} downloads into /tmp", exec.name()));
//!         }
//!     }
//! }
//!
//! // In a real plugin crate: `edr_sdk::export_detector!(DownloadToTmp);`
//!
//! // Native test, no Wasm involved:
//! let mut h = edr_sdk::testing::Harness::<DownloadToTmp>::new().unwrap();
//! let hits = h.run(&[edr_sdk::testing::exec("/usr/bin/curl", &["curl", "-o", "/tmp/x", "http://e.com/x"]).build()]);
//! assert_eq!(hits.len(), 1);
//! assert_eq!(hits[0].rule_id, "example.download-to-tmp");
//! ```
//!
//! Build the plugin with `edr pack build DIR` (or see `examples/hello-detector`).

#![deny(missing_docs)]

// Lets generated code name this crate `edr_sdk` from inside it too.
extern crate self as edr_sdk;

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "detector",
        pub_export_macro: true,
        export_macro_name: "__export_detector_bindings",
        default_bindings_module: "edr_sdk::bindings",
        additional_derives: [PartialEq],
        runtime_path: "::edr_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

mod detector;
pub mod host;
pub mod matchers;
mod types;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod __rt;

pub use detector::{Detector, Findings, Rule};
pub use types::{
    Action, Config, DataFile, Decision, Event, EventBody, EventKind, FileEvent, FileOp, Finding, KillTarget, LogLevel, LoginEvent, NetworkEvent, NetworkOp,
    PluginInfo, ProcessExec, ProcessExit, ProcessInfo, Severity, Strs, Transport,
};

/// Everything a plugin usually needs: `use edr_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::detector::{Detector, Findings, Rule};
    pub use crate::host;
    pub use crate::matchers::*;
    pub use crate::{
        Action, Config, DataFile, Decision, Event, EventBody, EventKind, FileEvent, FileOp, Finding, KillTarget, LogLevel, LoginEvent, NetworkEvent, NetworkOp,
        PluginInfo, ProcessExec, ProcessExit, ProcessInfo, Severity, Strs, Transport,
    };
}

/// Exports a [`Detector`] as the plugin's entry points.
///
/// Put it once at the root of your plugin crate:
///
/// ```ignore
/// edr_sdk::export_detector!(MyDetector);
/// ```
///
/// On `wasm32` this generates the component's export, the contract's
/// `detect` interface (`init`, `on-events`) at the SDK's contract version;
/// natively it expands to nothing, so the crate still builds and tests there.
#[macro_export]
macro_rules! export_detector {
    ($detector:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __EdrExports;
            impl $crate::bindings::exports::edr::plugin::detect::Guest for __EdrExports {
                fn init(config: $crate::Config) -> ::core::result::Result<$crate::PluginInfo, ::std::string::String> {
                    $crate::__rt::init::<$detector>(config)
                }
                fn on_events(
                    text: ::std::string::String,
                    lists: ::std::vec::Vec<u32>,
                    events: ::std::vec::Vec<$crate::bindings::edr::plugin::types::Event>,
                ) -> ::std::vec::Vec<$crate::Finding> {
                    $crate::__rt::on_events::<$detector>(text, lists, events)
                }
            }
    $crate::bindings::__export_detector_bindings!(__EdrExports with_types_in $crate::bindings);
        };
    };
}
