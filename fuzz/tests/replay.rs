//! Replays the committed fuzz inputs through their targets, without a
//! fuzzing engine: the minimised corpus (`fuzz/corpus/<target>/`) and every
//! input that once crashed, hung or blew up a target
//! (`fuzz/regressions/<target>/`). A target that panics fails the test.
//! This is how `cargo test --workspace` (and so `.ci/run`) replays them:
//! every regression, and a sample of at most [`CORPUS_SAMPLE`] corpus
//! inputs per target (`CRVS_FUZZ_REPLAY_ALL=1` for all of them).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crvs_schema::workflow::{Action, Transition};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable folder").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

/// At most this many corpus inputs per target in a default run (evenly
/// spread over the sorted names), so the debug build replays in well
/// under a minute; `CRVS_FUZZ_REPLAY_ALL=1` replays every one. Every
/// regression is always replayed.
const CORPUS_SAMPLE: usize = 150;

fn replay(target: &str) {
    let started = Instant::now();
    let mut corpus = inputs("corpus", target);
    assert!(!corpus.is_empty(), "the corpus of {target} is committed");
    let all = std::env::var_os("CRVS_FUZZ_REPLAY_ALL").is_some_and(|v| v == "1");
    if !all && corpus.len() > CORPUS_SAMPLE {
        let step = corpus.len().div_ceil(CORPUS_SAMPLE);
        corpus = corpus.into_iter().step_by(step).collect();
    }
    let regressions = inputs("regressions", target);
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("a readable input");
        // A panic names the input: the test harness prints it.
        eprintln!("{target}: {}", path.display());
        assert!(crvs_fuzz::run(target, &data), "{target} is a target");
    }
    eprintln!(
        "{target}: {} corpus inputs and {} regressions replayed in {:?}",
        corpus.len(),
        regressions.len(),
        started.elapsed()
    );
}

#[test]
fn the_change_set_corpus_replays_without_a_crash() {
    replay("change_set");
}

#[test]
fn the_sync_request_corpus_replays_without_a_crash() {
    replay("sync_request");
}

#[test]
fn the_sync_response_corpus_replays_without_a_crash() {
    replay("sync_response");
}

#[test]
fn the_record_chunk_corpus_replays_without_a_crash() {
    replay("record_chunk");
}

#[test]
fn the_server_ingest_corpus_replays_without_a_crash() {
    replay("server_ingest");
}

#[test]
fn the_json_inputs_corpus_replays_without_a_crash() {
    replay("json_inputs");
}

#[test]
fn every_target_has_a_corpus_folder_and_unknown_names_are_refused() {
    for target in crvs_fuzz::TARGETS {
        assert!(
            !inputs("corpus", target).is_empty(),
            "fuzz/corpus/{target} holds inputs"
        );
    }
    assert!(!crvs_fuzz::run("no_such_target", b""));
}

/// The server target gets past every signature and the hash chain: a real
/// approved birth sent through it is applied and gets its KIdC.
#[test]
fn an_approved_birth_through_the_server_target_is_applied_and_registered() {
    let mut doc = crvs_fuzz::new_base_record();
    for (action, by) in [(Action::Verify, "checker"), (Action::Approve, "registrar")] {
        let step = Transition {
            action,
            by: by.into(),
            at_ms: crvs_fuzz::NOW_MS - 3_600_000,
            device: "tablet".into(),
            reason: None,
            notification: None,
            code: None,
        };
        crvs_schema::record::append_transition(&mut doc, &step).expect("a step");
    }
    // Byte 0 = 0: a new record, its chunk alone.
    let mut input = vec![0];
    input.extend_from_slice(&doc.save_nocompress());
    let answer = crvs_fuzz::server_ingest_answer(&input).expect("an answer");
    assert!(answer.refusal.is_none(), "{:?}", answer.refusal);
    assert_eq!(answer.acks.len(), 1);
    assert!(
        !answer.updates.is_empty(),
        "the server's change with the KIdC comes back"
    );
}
