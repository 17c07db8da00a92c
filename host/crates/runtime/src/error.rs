//! Errors of loading and calling plugins.

/// Why a plugin could not be loaded. Every variant names the plugin and says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin `{plugin}`: not a valid WebAssembly component: {reason}")]
    Compile { plugin: String, reason: String },
    #[error("plugin `{plugin}` imports `{import}`, which is not part of the edr plugin contract; plugins may import only edr:plugin interfaces (no WASI, no other packages)")]
    ForeignImport { plugin: String, import: String },
    #[error("plugin `{plugin}` imports `{import}`, but its pack was not granted the `{capability}` capability (granted: {granted})")]
    NotGranted { plugin: String, import: String, capability: String, granted: String },
    #[error("plugin `{plugin}` targets contract `{import}`, but this agent supports edr:plugin@{supported}")]
    UnsupportedContract { plugin: String, import: String, supported: String },
    #[error("plugin `{plugin}` does not fit the edr:plugin contract (missing or mistyped exports): {reason}")]
    Link { plugin: String, reason: String },
    #[error("plugin `{plugin}` failed to instantiate: {reason}")]
    Instantiate { plugin: String, reason: String },
    #[error("plugin `{plugin}` rejected its configuration: {reason}")]
    InitRejected { plugin: String, reason: String },
    #[error("plugin `{plugin}` failed during init: {source}")]
    InitFailed { plugin: String, source: PluginError },
    #[error("plugin `{plugin}` subscribed to no event kinds; it would never be called")]
    NoSubscriptions { plugin: String },
    #[error("compile cache at {path}: {reason}")]
    Cache { path: String, reason: String },
}

/// Why a call into a plugin failed. The runtime has already dropped the
/// instance; the next call rebuilds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("exceeded its deadline of {deadline_ms} ms")]
    Timeout { deadline_ms: u64 },
    #[error("ran out of memory (cap {cap_bytes} bytes)")]
    OutOfMemory { cap_bytes: usize },
    #[error("trapped: {message}")]
    Trap { message: String },
    #[error("is quarantined after {strikes} failures: {reason}")]
    Quarantined { strikes: usize, reason: String },
    #[error("could not be re-instantiated: {message}")]
    Reinstantiate { message: String },
}

impl PluginError {
    /// A short stable name for metrics and status.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Timeout { .. } => "timeout",
            PluginError::OutOfMemory { .. } => "out-of-memory",
            PluginError::Trap { .. } => "trap",
            PluginError::Quarantined { .. } => "quarantined",
            PluginError::Reinstantiate { .. } => "reinstantiate",
        }
    }
}
