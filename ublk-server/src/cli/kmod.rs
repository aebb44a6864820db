//! `augur kmod`: the userspace side of the kernel module (`kmod/`): load a
//! model through `/dev/augur`, show the active one, and run the module's
//! self-test (its integer outputs, in the line format of `augur model
//! predict`, so the two compare with `diff`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;

use anyhow::Context;
use augur_predictor::FeatureSet;
use augur_predictor::cgen::format_line;
use clap::Subcommand;

use super::error::CliError;
use super::model::VectorArgs;

/// The module's device.
const DEV: &str = "/dev/augur";

/// `augur kmod ...`.
#[derive(Subcommand)]
pub enum KmodCmd {
    /// Load a model file into the module (root): parsed and checked there,
    /// then swapped in under RCU; a refused file leaves the active model.
    Load {
        /// Model file, or `default`.
        model: String,
    },
    /// The module's active model.
    Info,
    /// Score encoded vectors in the kernel and print each one's integer
    /// outputs, score and decision as `augur model predict` does; on stderr,
    /// the model used and the kernel's nanoseconds per prediction.
    Predict {
        #[command(flatten)]
        vectors: VectorArgs,
    },
}

/// `struct augur_ioc_info` (kmod/augur_uapi.h).
#[repr(C)]
#[derive(Default, Debug)]
struct IocInfo {
    crc: u32,
    feature_set: u32,
    n_inputs: u32,
    n_layers: u32,
    n_outputs: u32,
    pad: u32,
    swaps: u64,
}

/// `struct augur_ioc_predict` (kmod/augur_uapi.h).
#[repr(C)]
#[derive(Default, Debug)]
struct IocPredict {
    inputs: u64,
    outputs: u64,
    n: u32,
    n_inputs: u32,
    crc: u32,
    n_outputs: u32,
    elapsed_ns: u64,
}

/// Vectors per self-test call (`AUGUR_IOC_PREDICT_MAX`): one model each.
const PREDICT_MAX: usize = 1024;

/// `_IOC(dir, 0xA6, nr, size)` as the kernel encodes it (x86, arm64).
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xA6 << 8) | nr
}
const IOC_INFO: u64 = ioc(2, 1, std::mem::size_of::<IocInfo>());
const IOC_PREDICT: u64 = ioc(3, 2, std::mem::size_of::<IocPredict>());

fn open(write: bool) -> anyhow::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(DEV)
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => " (is augur.ko loaded? insmod kmod/augur.ko)",
                std::io::ErrorKind::PermissionDenied => " (root only)",
                _ => "",
            };
            CliError::BadFlag(format!("{DEV}: {e}{hint}")).into()
        })
}

fn info(f: &std::fs::File) -> anyhow::Result<IocInfo> {
    let mut i = IocInfo::default();
    // SAFETY: AUGUR_IOC_INFO writes one struct augur_ioc_info, which IocInfo
    // mirrors field for field (repr(C)), into memory we own.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), IOC_INFO as _, &mut i as *mut IocInfo) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("AUGUR_IOC_INFO");
    }
    Ok(i)
}

fn fs_of(code: u32) -> anyhow::Result<FeatureSet> {
    u8::try_from(code)
        .ok()
        .and_then(FeatureSet::from_code)
        .ok_or_else(|| anyhow::anyhow!("the module reports feature set {code}"))
}

pub(crate) fn cmd_kmod(c: KmodCmd) -> anyhow::Result<()> {
    match c {
        KmodCmd::Load { model } => {
            // Read and checked here too, so a bad file is named plainly;
            // the module checks it again, whole, before it swaps.
            let m = super::model::load_model(&model)?;
            let bytes = m.to_bytes();
            let mut f = open(true)?;
            match f.write(&bytes) {
                Ok(n) if n == bytes.len() => {}
                Ok(n) => anyhow::bail!("{DEV} took {n} of {} bytes", bytes.len()),
                Err(e) => {
                    return Err(CliError::BadFlag(format!(
                        "{DEV} refused model {} ({e}); its reason is in the kernel log (dmesg)",
                        m.id()
                    ))
                    .into());
                }
            }
            let i = info(&f)?;
            eprintln!(
                "kernel model {:08x} active ({} layers, {} inputs), {} swaps since load",
                i.crc, i.n_layers, i.n_inputs, i.swaps
            );
        }
        KmodCmd::Info => {
            let i = info(&open(false)?)?;
            if i.n_layers == 0 {
                println!("no model loaded ({} swaps since load)", i.swaps);
            } else {
                println!(
                    "model {:08x}: feature set {}, {} inputs, {} layers, {} outputs; {} swaps since load",
                    i.crc,
                    fs_of(i.feature_set)?,
                    i.n_inputs,
                    i.n_layers,
                    i.n_outputs,
                    i.swaps
                );
            }
        }
        KmodCmd::Predict { vectors } => {
            let f = open(false)?;
            let i = info(&f)?;
            if i.n_layers == 0 {
                return Err(CliError::BadFlag(
                    "the module has no model: augur kmod load FILE".into(),
                )
                .into());
            }
            let fs = fs_of(i.feature_set)?;
            let vs = super::model::vectors(fs, vectors, None)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let (mut ns, mut crcs) = (0u64, Vec::new());
            for chunk in vs.chunks(PREDICT_MAX) {
                let xs: Vec<i32> = chunk.iter().flatten().copied().collect();
                let mut outs = vec![0i64; chunk.len() * 3];
                let mut req = IocPredict {
                    inputs: xs.as_ptr() as u64,
                    outputs: outs.as_mut_ptr() as u64,
                    n: chunk.len() as u32,
                    n_inputs: fs.n_inputs() as u32,
                    ..IocPredict::default()
                };
                // SAFETY: the request points at xs (n * n_inputs i32) and
                // outs (room for n * 3 i64, the most the module writes:
                // 2 outputs and a score each), both alive for the call.
                let r = unsafe {
                    libc::ioctl(f.as_raw_fd(), IOC_PREDICT as _, &mut req as *mut IocPredict)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error()).context("AUGUR_IOC_PREDICT");
                }
                let k = req.n_outputs as usize + 1;
                for v in outs[..chunk.len() * k].chunks(k) {
                    writeln!(out, "{}", format_line(&v[..k - 1], v[k - 1]))?;
                }
                ns += req.elapsed_ns;
                if crcs.last() != Some(&req.crc) {
                    crcs.push(req.crc);
                }
            }
            out.flush()?;
            let models: Vec<String> = crcs.iter().map(|c| format!("{c:08x}")).collect();
            eprintln!(
                "{} vectors scored in the kernel by model {}: {:.0} ns per prediction",
                vs.len(),
                models.join(" then "),
                ns as f64 / vs.len().max(1) as f64
            );
        }
    }
    Ok(())
}
