//! Glue between [`crate::export_detector!`] and a [`Detector`]; not public API.

use crate::bindings::edr::plugin::types as wit;
use crate::detector::{Detector, Findings};
use crate::types::{decode, Config, Finding, LogLevel, PluginInfo};
use std::any::Any;
use std::cell::RefCell;

thread_local! {
    // One plugin instance per component instance. Wasm instances are
    // single-threaded, so a thread-local is the instance's global.
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// The plugin-info a detector declares.
pub fn info<D: Detector>() -> PluginInfo {
    PluginInfo { name: D::NAME.to_string(), version: D::VERSION.to_string(), description: D::DESCRIPTION.to_string(), subscriptions: D::SUBSCRIPTIONS.to_vec() }
}

/// Builds the detector and keeps it for later batches.
pub fn init<D: Detector>(config: Config) -> Result<PluginInfo, String> {
    let detector = D::init(&config)?;
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(detector)));
    Ok(info::<D>())
}

/// Runs one batch (in wire form) through the detector.
pub fn on_events<D: Detector>(text: String, lists: Vec<u32>, events: Vec<wit::Event>) -> Vec<Finding> {
    INSTANCE.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_mut().and_then(|b| b.downcast_mut::<D>()) {
            Some(detector) => {
                let views = decode(&text, &lists, &events);
                let mut findings = Findings::new();
                detector.on_events(&views, &mut findings);
                findings.into_vec()
            }
            None => {
                crate::host::log(LogLevel::Error, "on-events called before a successful init");
                Vec::new()
            }
        }
    })
}
