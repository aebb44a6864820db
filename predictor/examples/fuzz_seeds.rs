//! Writes the seed model files of the C parser's fuzz corpus
//! (`predictor/c/fuzz/corpus/`): small valid models of every feature set
//! and depth, so the fuzzer starts from files that reach every section.
//!
//!     cargo run -p augur-predictor --example fuzz_seeds -- predictor/c/fuzz/corpus

use augur_predictor::{FeatureSet, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    std::fs::create_dir_all(&dir)?;
    let cases: [(&str, FeatureSet, &[usize], usize); 6] = [
        ("linnos-linear", FeatureSet::LinnOs, &[], 2),
        ("linnos-3", FeatureSet::LinnOs, &[3], 2),
        ("ext-2-2", FeatureSet::LinnOsExt, &[2, 2], 2),
        ("write-2-2-2", FeatureSet::LinnOsWrite, &[2, 2, 2], 2),
        ("heimdall-2", FeatureSet::Heimdall, &[2], 1),
        ("heimdall-3-2", FeatureSet::Heimdall, &[3, 2], 1),
    ];
    for (k, (name, fs, hidden, outputs)) in cases.into_iter().enumerate() {
        let m = Model::random(fs, hidden, outputs, k as u64 + 1)?;
        m.save(&std::path::Path::new(&dir).join(format!("seed-{name}.augm")))?;
    }
    Ok(())
}
