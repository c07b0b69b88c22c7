//! What one unlock costs: the median time of `DataKey::unwrap` (Argon2id,
//! then opening the wrapped key) for the production setting, the one before
//! it and a few neighbours, on this machine's one core.
//!
//! A low-end Android tablet is 3 to 5 times slower than one core of a
//! current x86 machine: the production setting should take 0.1 to 0.17 s
//! here to cost about half a second there. The fastest of the runs is the
//! figure least disturbed by other work on a shared machine.
//!
//! `cargo bench -p crvs-core --bench kdf` prints one JSON object.

use std::time::Instant;

use crvs_core::crypto::{DataKey, KdfParams, Passphrase};
use serde_json::json;

const RUNS: usize = 9;

/// The median and the fastest of `RUNS` unlocks, in ms. The fastest is the
/// one least disturbed by other work on the machine.
fn unlock_ms(params: KdfParams) -> (f64, f64) {
    let aad = b"bench";
    let pass = Passphrase::from("a long passphrase the registrar chose");
    let key = DataKey::generate();
    let wrapped = key.wrap(&pass, params, aad).expect("wrap");
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let k = DataKey::unwrap(&pass, &wrapped, aad).expect("unwrap");
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            assert!(k.same_key(&key));
            elapsed
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    (times[RUNS / 2], times[0])
}

fn main() {
    let candidates = [
        ("before_2026_12", KdfParams::BEFORE_2026_12),
        ("production", KdfParams::PRODUCTION),
        (
            "m64_t3",
            KdfParams {
                m_cost: 65536,
                t_cost: 3,
                p_cost: 1,
            },
        ),
        (
            "m128_t2",
            KdfParams {
                m_cost: 131072,
                t_cost: 2,
                p_cost: 1,
            },
        ),
    ];
    let mut out = serde_json::Map::new();
    for (name, params) in candidates {
        let (median, fastest) = unlock_ms(params);
        out.insert(
            name.to_string(),
            json!({
                "params": params.encode(),
                "unlock_ms_median": (median * 10.0).round() / 10.0,
                "unlock_ms_fastest": (fastest * 10.0).round() / 10.0,
                "low_end_tablet_ms_estimate": [(fastest * 3.0).round(), (fastest * 5.0).round()],
            }),
        );
    }
    out.insert("runs".into(), json!(RUNS));
    println!("{}", serde_json::Value::Object(out));
}
