//! Detects the shipped default model (`models/default.augm`) so that
//! `Model::default_model` can embed it with `include_bytes!` when present.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(augur_default_model)");
    println!("cargo::rerun-if-changed=models");
    println!("cargo::rerun-if-changed=models/default.augm");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let path = std::path::Path::new(&manifest).join("models/default.augm");
    if path.is_file() {
        println!("cargo::rustc-cfg=augur_default_model");
    }
}
