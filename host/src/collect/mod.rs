//! Event sources. Every source produces [`edr_event::Event`]s for the pipeline.

pub mod jsonl;
