//! The built-in detection pack, built and signed by `build.rs` and embedded
//! in the binary; the agent library gets it as an [`edr_agent::BuiltinPack`].

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The embedded pack, its signature and the key it was signed with.
pub const PACK: edr_agent::BuiltinPack = edr_agent::BuiltinPack { archive: BUILTIN_PACK, signature: BUILTIN_PACK_SIG, public_key: BUILTIN_DEV_KEY };
