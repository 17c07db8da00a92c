//! Errors of loading and calling plugins.

/// Why a plugin could not be loaded. Every variant names the plugin and says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component wasmtime can compile: a
    /// core module that was never wrapped as a component, a truncated or
    /// corrupt file, or a feature this engine does not enable. Rebuild the
    /// plugin with `edr plugin build` (which wraps the module as a component).
    #[error("plugin `{plugin}`: not a valid WebAssembly component: {reason}")]
    Compile {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// wasmtime's error chain, naming the offending section or feature.
        reason: String,
    },
    /// The component imports something outside the `edr:plugin` package
    /// (typically WASI, when it was built for `wasm32-wasip*` rather than
    /// `wasm32-unknown-unknown`), or an `edr:plugin` interface that is no
    /// capability. Rebuild it with `edr plugin build`; `edr plugin inspect`
    /// lists what a component imports.
    #[error("plugin `{plugin}` imports `{import}`, which is not part of the edr plugin contract; plugins may import only edr:plugin interfaces (no WASI, no other packages)")]
    ForeignImport {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// The first refused import, in full (e.g. `wasi:cli/environment@0.2.0`).
        import: String,
    },
    /// The component imports a capability interface its grant lacks (see
    /// [`Grants`](crate::Grants)). Either grant the capability (in the agent:
    /// `plugins.capabilities.<plugin>`, or for `respond` the pack's response
    /// grant) or rebuild the plugin without the import.
    #[error("plugin `{plugin}` imports `{import}`, but its pack was not granted the `{capability}` capability (granted: {granted})")]
    NotGranted {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// The refused import, in full (e.g. `edr:plugin/respond@0.2.0`).
        import: String,
        /// The capability that import needs (`log`, `clock`, `state`, `process`, `respond`).
        capability: String,
        /// The capabilities that were granted, comma-separated, or `none`.
        granted: String,
    },
    /// The component was built against a contract version this agent does not
    /// link: an import or its `detect` export names a version outside
    /// [`CONTRACT_VERSIONS`](crate::CONTRACT_VERSIONS). Rebuild the plugin
    /// against a supported version of the SDK, or upgrade the agent.
    #[error("plugin `{plugin}` targets contract `{import}`, but this agent supports edr:plugin@{supported}")]
    UnsupportedContract {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// The import or export that names the unsupported version
        /// (e.g. `edr:plugin/detect@0.9.0`).
        import: String,
        /// The versions this agent links, newest first, joined so that the
        /// message reads `edr:plugin@0.2.0, edr:plugin@0.1.0`.
        supported: String,
    },
    /// The component's imports are acceptable but its exports do not make a
    /// detector: it exports neither `edr:plugin/detect` (0.2.0) nor a
    /// world-level `on-events` (0.1.0), or wasmtime cannot link it against the
    /// host imports. Usually a crate that does not use the SDK's export
    /// macro (`edr_sdk::export_detector!`); rebuild it with the SDK and check
    /// `edr plugin inspect`.
    #[error("plugin `{plugin}` does not fit the edr:plugin contract (missing or mistyped exports): {reason}")]
    Link {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// What is missing or mistyped, with the component's export names.
        reason: String,
    },
    /// Building the first instance failed without the plugin's own code
    /// trapping: its exports do not match the generated bindings of its
    /// contract version, its initial memory is over the memory cap
    /// ([`Limits::memory_bytes`](crate::Limits::memory_bytes)), or every
    /// instance slot of the runtime
    /// ([`RuntimeConfig::max_instances`](crate::RuntimeConfig::max_instances))
    /// is in use. The reason says which.
    #[error("plugin `{plugin}` failed to instantiate: {reason}")]
    Instantiate {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// wasmtime's error chain, or which export does not match.
        reason: String,
    },
    /// The plugin's `init` ran and returned an error: it refused the settings
    /// or data files in its [`PluginConfig`](edr_event::PluginConfig). The
    /// reason is the plugin's own message; fix the configuration it names
    /// (in the agent: `[plugins.settings.<plugin>]` or its data files).
    #[error("plugin `{plugin}` rejected its configuration: {reason}")]
    InitRejected {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// The error string the plugin's `init` returned, unchanged.
        reason: String,
    },
    /// The plugin's start-up failed: instantiation or `init` trapped, ran out
    /// of memory, or overran [`Limits::init_deadline`](crate::Limits::init_deadline)
    /// (the source says which). A plugin that compiles large rule sets at init
    /// may need a longer init deadline or more memory; a trap is a bug in the
    /// plugin.
    #[error("plugin `{plugin}` failed during init: {source}")]
    InitFailed {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
        /// How it failed: [`PluginError::Timeout`], [`PluginError::OutOfMemory`]
        /// or [`PluginError::Trap`].
        source: PluginError,
    },
    /// `init` succeeded but the returned
    /// [`PluginInfo::subscriptions`](edr_event::PluginInfo::subscriptions) is
    /// empty, so the plugin would never receive an event. The plugin must list
    /// the event kinds it handles in its plugin info.
    #[error("plugin `{plugin}` subscribed to no event kinds; it would never be called")]
    NoSubscriptions {
        /// The plugin's name as given in [`PluginSpec::name`](crate::PluginSpec::name).
        plugin: String,
    },
    /// The compile cache could not be used. Not returned by this version:
    /// an unusable cache entry is logged as a warning, deleted and the plugin
    /// compiled afresh; a cache directory that cannot be created fails
    /// [`Runtime::new`](crate::Runtime::new) instead.
    #[error("compile cache at {path}: {reason}")]
    Cache {
        /// The cache file or directory.
        path: String,
        /// The I/O or deserialisation error.
        reason: String,
    },
}

/// Why a call into a plugin failed. The runtime has already dropped the
/// instance; the next call rebuilds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The call (or `init`) was still running when its deadline passed and
    /// was interrupted. The plugin is too slow for its batches: make it
    /// cheaper, or raise [`Limits::call_deadline`](crate::Limits::call_deadline)
    /// (for `init`, [`Limits::init_deadline`](crate::Limits::init_deadline)).
    /// Counts as a strike.
    #[error("exceeded its deadline of {deadline_ms} ms")]
    Timeout {
        /// The deadline that was exceeded, milliseconds.
        deadline_ms: u64,
    },
    /// The plugin tried to grow its linear memory past its cap, and then
    /// trapped. Either it leaks (state kept across batches without bound) or
    /// it needs a larger [`Limits::memory_bytes`](crate::Limits::memory_bytes).
    /// Counts as a strike.
    #[error("ran out of memory (cap {cap_bytes} bytes)")]
    OutOfMemory {
        /// The plugin's memory cap, bytes.
        cap_bytes: usize,
    },
    /// The plugin's code trapped: a panic, an `unreachable`, an out-of-bounds
    /// access or a stack overflow. A bug in the plugin; the message (and the
    /// first backtrace frame, when wasmtime gives one) points at it. Counts
    /// as a strike.
    #[error("trapped: {message}")]
    Trap {
        /// The first line of the trap message, plus the first frame of the
        /// Wasm backtrace when there is one.
        message: String,
    },
    /// The call was not made: the plugin is quarantined (see
    /// [`Health::Quarantined`](crate::Health::Quarantined)) and its events
    /// were skipped. It stays so until
    /// [`Plugin::reenable`](crate::Plugin::reenable) (`edr plugin reenable`)
    /// or a new version replaces it. Not a strike itself.
    #[error("is quarantined after {strikes} failures: {reason}")]
    Quarantined {
        /// Failures within the strike window that caused the quarantine.
        strikes: usize,
        /// The last failure, as text (e.g. `trapped: ...`).
        reason: String,
    },
    /// After an earlier failure dropped the instance, building a fresh one
    /// failed for a reason other than a trap, timeout or memory (e.g. its
    /// `init` now rejects the configuration, or no instance slot is free). The
    /// batch was skipped; counts as a strike.
    #[error("could not be re-instantiated: {message}")]
    Reinstantiate {
        /// Why the instance could not be built, or `init`'s error string.
        message: String,
    },
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
