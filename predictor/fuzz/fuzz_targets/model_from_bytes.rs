//! Fuzz target for `Model::from_bytes`.
//!
//! Each input is parsed twice: as is (exercising the structural checks and the
//! checksum), and with its last 4 bytes replaced by the CRC-32 of the rest (so
//! the fuzzer also reaches the semantic checks and can produce models that
//! load). Any model that loads must serialize back to the same bytes, describe
//! itself, and give the same integer scores on the fast path (both kernels) as
//! the checked reference, on zero, maximal and fuzzer-chosen inputs: a panic
//! there means the loader let through a model that can overflow.
#![no_main]

use augur_feature_store::{Completed, HISTORY_LEN, HistorySnapshot};
use augur_predictor::features::MAX_INPUTS;
use augur_predictor::infer::reference;
use augur_predictor::{Kernel, Model, ReadInfo, Scratch};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    let Ok(m) = Model::from_bytes(data) else {
        return;
    };
    assert_eq!(m.to_bytes(), data, "accepted model does not round-trip");
    let _ = m.describe();
    let fs = m.feature_set();
    let n = fs.n_inputs();
    let hi = fs.max_int_input();
    let mut s = Scratch::for_model(&m);
    let mut inputs = vec![vec![0; n], vec![hi; n]];
    inputs.push(
        (0..n)
            .map(|i| data.get(i).map_or(0, |&b| b as i32 % (hi + 1)))
            .collect(),
    );
    for x in &inputs {
        let want = reference::score_int(&m, x);
        assert_eq!(m.score_int_encoded(x, &mut s, Kernel::Auto), want);
        assert_eq!(m.score_int_encoded(x, &mut s, Kernel::Portable), want);
    }
    let c = Completed {
        latency_us: u32::MAX,
        pending_pages_at_issue: u32::MAX,
        pending_ios_at_issue: u32::MAX,
        size_bytes: u32::MAX,
    };
    let snap = HistorySnapshot {
        pending_pages: u32::MAX,
        pending_ios: u32::MAX,
        recent: [c; HISTORY_LEN],
        len: HISTORY_LEN as u8,
        oldest_pending_us: u32::MAX,
        read_max_us: u32::MAX,
    };
    let r = ReadInfo {
        size_bytes: u32::MAX,
    };
    let mut x = [0i32; MAX_INPUTS];
    let k = m.encode_int(&snap, r, &mut x);
    assert_eq!(m.score_int(&snap, r), reference::score_int(&m, &x[..k]));
    let _ = m.score_f32(&snap, r);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 4 {
        let mut d = data.to_vec();
        let body = d.len() - 4;
        let crc = crc32fast::hash(&d[..body]);
        d[body..].copy_from_slice(&crc.to_le_bytes());
        check(&d);
    }
});
