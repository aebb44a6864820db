//! The `augur` subcommands that make, inspect and judge models:
//! `train`, `eval`, `model show`, `trace import`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use augur_feature_store::{LogWriter, TrainingRecord, read_log};
use augur_predictor::eval::{evaluate, evaluate_labelled};
use augur_predictor::label::{LabelRule, PeriodRule, is_slow};
use augur_predictor::trace::{ImportOptions, TraceFormat, import_file};
use augur_predictor::train::{Arch, Progress, ReplicaSelection, TrainConfig, train};
use augur_predictor::{FeatureSet, Model, ModelError};
use clap::{Args, Subcommand};

use super::error::CliError;

/// `augur train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Training logs (from `augur record` or `augur trace import`).
    #[arg(long = "log", required = true, num_args = 1..)]
    logs: Vec<PathBuf>,
    /// Model file to write.
    #[arg(long)]
    out: PathBuf,
    /// Architecture: base (31-256-2), deep1, deep2, heimdall.
    #[arg(long, default_value = "base")]
    arch: String,
    /// Inputs of base, deep1 and deep2: linnos-write (the default: LinnOS's
    /// 31 digits, the oldest pending I/O's age, the worst of the last ~64
    /// read latencies, and the newest and least of the last four write
    /// latencies, 47 inputs), linnos-ext (without the writes, 39) or linnos
    /// (the paper's 31). heimdall always has its own.
    #[arg(long, value_name = "SET")]
    features: Option<String>,
    /// The same as `--features linnos`.
    #[arg(long, conflicts_with_all = ["features", "extended"])]
    plain: bool,
    /// The same as `--features linnos-ext`; kept for scripts.
    #[arg(long, hide = true, conflicts_with = "features")]
    extended: bool,
    /// Train on one replica's reads (its index), or `pooled`.
    #[arg(long, default_value = "pooled")]
    replica: String,
    /// Label rule: min(p98,4x-median) (the default: slow above the 98th
    /// percentile or 4x the median, whichever is lower, so a device that
    /// stalls more often than 2% of the time still has its stalls
    /// labelled), a percentile like p98, a median multiple like 4x-median,
    /// or inflection (the LinnOS tangent method).
    #[arg(long, default_value = "min(p98,4x-median)")]
    label: String,
    /// Period labels: also label slow every read issued in a slow period of
    /// its replica, a window of ± this long in which at least
    /// --period-slow-fraction of the reads were slow; `off` for per-read
    /// labels only (LinnOS). Where period labels would mark most reads slow,
    /// training says so and keeps the per-read labels.
    #[arg(long, default_value = "4ms", value_name = "DURATION|off")]
    label_period: String,
    /// Share of slow reads that makes a window a slow period.
    #[arg(long, default_value_t = 0.1)]
    period_slow_fraction: f64,
    /// Loss weight of a false submit (slow predicted fast) relative to a false revoke.
    #[arg(long, default_value_t = 5.0)]
    false_submit_weight: f32,
    /// Fraction of reads held out for validation.
    #[arg(long, default_value_t = 0.2)]
    validation: f64,
    /// Most epochs.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Epochs without validation improvement before stopping.
    #[arg(long, default_value_t = 4)]
    patience: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed (training is reproducible for a given seed and data).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Date to record in the model (YYYY-MM-DD; default today), for byte-identical rebuilds.
    #[arg(long)]
    date: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The feature set of `--features` / `--plain` / `--extended`: linnos-write
/// by default for base, deep1 and deep2; heimdall's own for heimdall.
fn train_inputs(a: &TrainArgs, arch: Arch) -> Result<Option<FeatureSet>, CliError> {
    let asked = match (&a.features, a.plain, a.extended) {
        (Some(name), _, _) => Some(FeatureSet::parse(name).ok_or_else(|| {
            CliError::BadFlag(format!(
                "--features '{name}' is not one of linnos-write, linnos-ext, linnos, heimdall"
            ))
        })?),
        (None, true, _) => Some(FeatureSet::LinnOs),
        (None, false, true) => Some(FeatureSet::LinnOsExt),
        (None, false, false) => None,
    };
    Ok(match (arch, asked) {
        (Arch::Heimdall, None) => None,
        (_, None) => Some(FeatureSet::LinnOsWrite),
        (_, Some(fs)) => Some(fs),
    })
}

/// The period rule of `--label-period D --period-slow-fraction F`.
/// `--label-period`: a duration, or `off`/`none`/`0` for none.
fn parse_period(s: &str) -> Result<Option<std::time::Duration>, String> {
    match s.trim() {
        "off" | "none" | "0" => Ok(None),
        t => humantime::parse_duration(t)
            .map(Some)
            .map_err(|e| format!("'{s}' is not a duration or 'off': {e}")),
    }
}

fn period_rule(d: std::time::Duration, fraction: f64) -> Result<PeriodRule, CliError> {
    PeriodRule {
        window_us: u32::try_from(d.as_micros()).unwrap_or(u32::MAX),
        min_slow_fraction: fraction,
    }
    .validate()
    .map_err(|e| CliError::BadFlag(format!("--label-period: {e}")))
}

/// `augur eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Model file, or `default` for the shipped model.
    #[arg(long, default_value = "default")]
    model: String,
    /// Logs to evaluate on.
    #[arg(long = "log", required = true, num_args = 1..)]
    logs: Vec<PathBuf>,
    /// Slow/fast threshold in microseconds (default: the model's own).
    #[arg(long)]
    threshold_us: Option<u32>,
    /// Only this replica's reads.
    #[arg(long)]
    replica: Option<u16>,
    /// Also score against period labels with this half-window (e.g. 4ms),
    /// as `augur train --label-period` makes them (JSON key `period`).
    #[arg(long, value_parser = humantime::parse_duration)]
    label_period: Option<std::time::Duration>,
    /// Share of slow reads that makes a window a slow period (with --label-period).
    #[arg(long, default_value_t = 0.1, requires = "label_period")]
    period_slow_fraction: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `augur model ...`.
#[derive(Subcommand)]
pub enum ModelCmd {
    /// Print a model file's header, shapes, scales and training metadata.
    Show {
        /// Model file, or `default`.
        model: String,
    },
    /// Write a model with random weights (seeded) of an architecture: not
    /// trained, its decisions mean nothing; for tests, benchmarks and
    /// checking the C and kernel paths against the Rust one.
    Random {
        /// base (31-256-2), deep1, deep2, heimdall.
        #[arg(long, default_value = "base")]
        arch: String,
        /// Inputs of base, deep1 and deep2: linnos, linnos-ext or linnos-write.
        #[arg(long, value_name = "SET")]
        features: Option<String>,
        /// Seed of the weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Model file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the integer path as C: the core (shared with the kernel
    /// module), the model as a constant struct, a userspace check program
    /// and a Makefile whose default target builds it.
    ExportC {
        /// Model file, or `default`.
        model: String,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the Rust integer path's outputs, score and decision for encoded
    /// input vectors, one line each, in the format of export-c's check
    /// program (so the two compare with diff).
    Predict {
        /// Model file, or `default`.
        #[arg(long, default_value = "default")]
        model: String,
        #[command(flatten)]
        vectors: VectorArgs,
        /// Also write the generated vectors here, as the check program reads them.
        #[arg(long, requires = "random")]
        emit_inputs: Option<PathBuf>,
        /// Print no lines: score every vector this many times on the integer
        /// fast path, one at a time, and say on stderr how many nanoseconds
        /// one prediction took (as `check --bench` does for the C).
        #[arg(long, value_name = "REPS")]
        time: Option<u32>,
    },
}

/// Where `model predict` and `kmod predict` get their encoded vectors.
#[derive(Args)]
pub struct VectorArgs {
    /// Encoded vectors, one per line (`-` for stdin).
    #[arg(long, conflicts_with = "random", required_unless_present = "random")]
    input: Option<PathBuf>,
    /// Generate this many vectors instead: the edge cases first (zeros,
    /// maxima, alternations), then random ones.
    #[arg(long)]
    random: Option<usize>,
    /// Seed of --random.
    #[arg(long, default_value_t = 1, requires = "random")]
    seed: u64,
}

/// `augur trace ...`.
#[derive(Subcommand)]
pub enum TraceCmd {
    /// Turn an MSR-Cambridge CSV, blkparse text or FlashNet replay trace into a training log.
    Import {
        /// The trace file.
        input: PathBuf,
        /// Training log to write.
        #[arg(long)]
        out: PathBuf,
        /// msr, blkparse or flashnet (default: detect from the first line).
        #[arg(long)]
        format: Option<String>,
        /// Skip malformed lines (counted) instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
    },
    /// Turn a trace into a fio iolog (version 3) for fio's read_iolog, offsets wrapped into the target.
    ToFio {
        /// The trace file.
        input: PathBuf,
        /// The iolog to write.
        #[arg(long)]
        out: PathBuf,
        /// msr, blkparse or flashnet (default: detect from the first line).
        #[arg(long)]
        format: Option<String>,
        /// Only this disk of the trace (its index in order of first appearance; default: all).
        #[arg(long)]
        disk: Option<u16>,
        /// Replay speed: 2 replays twice as fast.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// The device or file the log will be replayed on: its name goes in the log, its size wraps the offsets.
        #[arg(long)]
        target: Option<PathBuf>,
        /// The target's size (default: the size of --target).
        #[arg(long, value_parser = super::args::parse_size)]
        size: Option<u64>,
        /// Offsets and lengths are multiples of this.
        #[arg(long, default_value = "4096", value_parser = super::args::parse_size)]
        align: u64,
        /// Skip malformed lines (counted) instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
    },
}

/// Loads a model by file name or `default`; errors name the file.
pub fn load_model(spec: &str) -> anyhow::Result<Model> {
    if spec == "default" {
        return Model::default_model().map_err(|e| match e {
            ModelError::NoDefaultModel => anyhow::Error::new(CliError::BadFlag(
                "this build has no default model (predictor/models/default.augm); give --model FILE".into(),
            )),
            e => anyhow::Error::new(e).context("loading the default model"),
        });
    }
    Model::load(Path::new(spec))
        .map_err(|e| anyhow::Error::new(CliError::BadFlag(format!("model {spec}: {e}"))))
}

/// The records of `paths`, laid end to end in time (each log's replicas
/// are their own devices: see [`augur_predictor::label::join_logs`]).
fn load_logs(paths: &[PathBuf]) -> anyhow::Result<Vec<TrainingRecord>> {
    let mut logs = Vec::with_capacity(paths.len());
    for p in paths {
        logs.push(
            read_log(p).map_err(|e| {
                anyhow::Error::new(CliError::BadFlag(format!("{}: {e}", p.display())))
            })?,
        );
    }
    Ok(augur_predictor::label::join_logs(logs))
}

/// `augur train`.
pub fn cmd_train(a: TrainArgs) -> anyhow::Result<()> {
    let bad = |m: String| anyhow::Error::new(CliError::BadFlag(m));
    let arch = Arch::parse(&a.arch).ok_or_else(|| {
        bad(format!(
            "unknown --arch '{}' (base, deep1, deep2, heimdall)",
            a.arch
        ))
    })?;
    let replicas = if a.replica == "pooled" {
        ReplicaSelection::Pooled
    } else {
        ReplicaSelection::Only(a.replica.parse().map_err(|_| {
            bad(format!(
                "--replica '{}' is not an index or 'pooled'",
                a.replica
            ))
        })?)
    };
    let label = LabelRule::parse(&a.label).map_err(|e| bad(format!("--label: {e}")))?;
    let period = parse_period(&a.label_period)
        .map_err(|e| bad(format!("--label-period {e}")))?
        .map(|d| period_rule(d, a.period_slow_fraction))
        .transpose()?;
    let inputs = train_inputs(&a, arch)?;
    let records = load_logs(&a.logs)?;
    let names: Vec<String> = a.logs.iter().map(|p| p.display().to_string()).collect();
    let cfg = TrainConfig {
        arch,
        inputs,
        replicas,
        label,
        period,
        false_submit_weight: a.false_submit_weight,
        validation_fraction: a.validation,
        max_epochs: a.epochs,
        patience: a.patience,
        batch_size: a.batch,
        learning_rate: a.lr,
        seed: a.seed,
        data_description: format!("{} records from {}", records.len(), names.join(", ")),
        date: a.date,
        ..TrainConfig::default()
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut batches = 0u64;
    let (model, report) = train(&records, &cfg, &mut |p| match p {
        Progress::Prepared {
            batches_per_epoch,
            max_epochs,
            ..
        } => {
            batches = batches_per_epoch as u64;
            bar.set_length(batches * max_epochs as u64);
        }
        Progress::Batch { epoch, loss, .. } => {
            bar.set_prefix(epoch.to_string());
            bar.inc(1);
            if bar.position().is_multiple_of(64) {
                bar.set_message(format!("loss {loss:.4}"));
            }
        }
        Progress::Epoch(s) => {
            bar.set_message(format!(
                "val loss {:.4} acc {:.2}%",
                s.val_loss,
                s.val_accuracy * 100.0
            ));
        }
        Progress::EarlyStopped { .. } => {}
    })
    .map_err(|e| bad(format!("training failed: {e}")))?;
    bar.finish_and_clear();
    if let Some(share) = report.period_labels_dropped {
        eprintln!(
            "augur train: period labels would mark {:.0}% of the reads slow (this device is in a slow period most of the time), so the model is trained on per-read labels",
            share * 100.0
        );
    }
    model
        .save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
        println!("wrote {}", a.out.display());
    }
    Ok(())
}

/// `augur eval`.
pub fn cmd_eval(a: EvalArgs) -> anyhow::Result<()> {
    let model = load_model(&a.model)?;
    let mut records = load_logs(&a.logs)?;
    if let Some(r) = a.replica {
        records.retain(|x| x.replica == r);
    }
    let threshold = a.threshold_us.unwrap_or(model.meta().threshold_us);
    let report = evaluate(&model, &records, threshold);
    let period = match a.label_period {
        None => None,
        Some(d) => {
            let rule = period_rule(d, a.period_slow_fraction)?;
            let keyed: Vec<(u16, u64, bool)> = records
                .iter()
                .filter(|r| r.op == augur_feature_store::Op::Read)
                .map(|r| (r.replica, r.time_ns, is_slow(r.latency_us, threshold)))
                .collect();
            let truth = rule.apply(&keyed);
            Some((rule, evaluate_labelled(&model, &records, &truth, threshold)))
        }
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some((_, p)), Some(obj)) = (&period, v.as_object_mut()) {
            obj.insert("period".into(), serde_json::to_value(p)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.render_text());
        if let Some((rule, p)) = &period {
            println!("against period labels ({rule}):");
            print!("{}", p.render_text());
        }
    }
    Ok(())
}

/// `augur model ...`.
pub fn cmd_model(c: ModelCmd) -> anyhow::Result<()> {
    match c {
        ModelCmd::Show { model } => {
            let m = load_model(&model)?;
            print!("{}", m.describe());
        }
        ModelCmd::Random {
            arch,
            features,
            seed,
            out,
        } => {
            let a = Arch::parse(&arch).ok_or_else(|| {
                CliError::BadFlag(format!(
                    "--arch {arch}: one of base, deep1, deep2, heimdall"
                ))
            })?;
            let fs = match features.as_deref() {
                None => a.feature_set(),
                Some(_) if a == Arch::Heimdall => {
                    return Err(CliError::BadFlag("--features: heimdall has its own".into()).into());
                }
                Some(f) => FeatureSet::parse(f).ok_or_else(|| {
                    CliError::BadFlag(format!(
                        "--features {f}: linnos, linnos-ext or linnos-write"
                    ))
                })?,
            };
            let w = a.widths();
            let m = Model::random(fs, &w[1..w.len() - 1], w[w.len() - 1], seed)?;
            m.save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote random model {} ({}) to {}",
                m.id(),
                m.shape_string(),
                out.display()
            );
        }
        ModelCmd::ExportC { model, out } => {
            let m = load_model(&model)?;
            let files = augur_predictor::cgen::export_c(&m, &out)
                .with_context(|| format!("writing C into {}", out.display()))?;
            eprintln!(
                "wrote {} files for model {} ({}) into {}; `make -C {}` builds ./check",
                files.len(),
                m.id(),
                m.shape_string(),
                out.display(),
                out.display()
            );
        }
        ModelCmd::Predict {
            model,
            vectors,
            emit_inputs,
            time,
        } => cmd_predict(&model, vectors, emit_inputs, time)?,
    }
    Ok(())
}

/// `augur model predict`.
fn cmd_predict(
    model: &str,
    v: VectorArgs,
    emit_inputs: Option<PathBuf>,
    time: Option<u32>,
) -> anyhow::Result<()> {
    use augur_predictor::cgen::check_line;
    use std::io::Write;
    let m = load_model(model)?;
    let inputs = vectors(m.feature_set(), v, emit_inputs)?;
    if let Some(reps) = time {
        let mut s = augur_predictor::Scratch::for_model(&m);
        let mut sink = 0i64;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            for x in &inputs {
                sink = sink.wrapping_add(m.score_int_encoded(
                    x,
                    &mut s,
                    augur_predictor::Kernel::Auto,
                ));
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / (f64::from(reps) * inputs.len().max(1) as f64);
        std::hint::black_box(sink);
        eprintln!(
            "{ns:.1} ns per prediction ({} vectors x {reps}, Rust integer path, {} kernel)",
            inputs.len(),
            m.int_kernel_name()
        );
        return Ok(());
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for x in &inputs {
        writeln!(out, "{}", check_line(&m, x))?;
    }
    out.flush()?;
    Ok(())
}

/// The encoded vectors of `model predict` and `kmod predict`: read from
/// `--input`, or `--random` generated ones (also written to `emit_inputs`).
pub(crate) fn vectors(
    fs: FeatureSet,
    v: VectorArgs,
    emit_inputs: Option<PathBuf>,
) -> anyhow::Result<Vec<Vec<i32>>> {
    use augur_predictor::cgen::{random_inputs, read_inputs, write_inputs};
    let inputs = match (v.input, v.random) {
        (_, Some(n)) => random_inputs(fs, n, v.seed),
        (Some(path), None) => {
            read_inputs(fs, &path).map_err(|e| CliError::BadFlag(format!("--input {e}")))?
        }
        (None, None) => {
            return Err(CliError::BadFlag("give --input FILE or --random N".into()).into());
        }
    };
    if let Some(path) = emit_inputs {
        write_inputs(&path, &inputs).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(inputs)
}

/// `augur trace ...`.
pub fn cmd_trace(c: TraceCmd) -> anyhow::Result<()> {
    match c {
        TraceCmd::Import {
            input,
            out,
            format,
            skip_bad,
        } => {
            let fmt = match format.as_deref() {
                None => None,
                Some(f) => Some(TraceFormat::parse(f).ok_or_else(|| {
                    CliError::BadFlag(format!(
                        "unknown trace format '{f}' ({})",
                        TraceFormat::KNOWN
                    ))
                })?),
            };
            let trace = import_file(&input, fmt, ImportOptions { skip_bad })
                .map_err(|e| CliError::BadFlag(format!("{}: {e}", input.display())))?;
            let recs = trace.training_records();
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = LogWriter::new(std::io::BufWriter::new(file))?;
            w.write(&recs)?;
            w.finish()?;
            println!(
                "{}: {} I/Os on {} disk(s), {} records ({} reads) written to {}, {} malformed line(s) skipped",
                input.display(),
                trace.events.len(),
                trace.disks.len(),
                recs.len(),
                recs.iter()
                    .filter(|r| r.op == augur_feature_store::Op::Read)
                    .count(),
                out.display(),
                trace.skipped
            );
            for e in &trace.skipped_examples {
                eprintln!("  skipped: {e}");
            }
        }
        TraceCmd::ToFio {
            input,
            out,
            format,
            disk,
            speed,
            target,
            size,
            align,
            skip_bad,
        } => {
            let fmt = match format.as_deref() {
                None => None,
                Some(f) => Some(TraceFormat::parse(f).ok_or_else(|| {
                    CliError::BadFlag(format!(
                        "unknown trace format '{f}' ({})",
                        TraceFormat::KNOWN
                    ))
                })?),
            };
            let target_size =
                match (size, &target) {
                    (Some(s), _) => s,
                    (None, Some(t)) => augur::fio::target_size(t).filter(|&s| s > 0).ok_or_else(
                        || {
                            CliError::BadFlag(format!(
                                "--target {}: cannot read its size (missing or empty; give --size)",
                                t.display()
                            ))
                        },
                    )?,
                    (None, None) => {
                        return Err(CliError::BadFlag(
                            "give --target DEV|FILE or --size BYTES (offsets are wrapped into it)"
                                .into(),
                        )
                        .into());
                    }
                };
            let trace = import_file(&input, fmt, ImportOptions { skip_bad })
                .map_err(|e| CliError::BadFlag(format!("{}: {e}", input.display())))?;
            if let Some(d) = disk
                && usize::from(d) >= trace.disks.len()
            {
                return Err(CliError::BadFlag(format!(
                    "--disk {d}: the trace has {} disk(s) ({})",
                    trace.disks.len(),
                    trace.disks.join(", ")
                ))
                .into());
            }
            let ios = trace.workload(disk);
            let opts = augur::fio::IologOptions {
                file_name: target
                    .as_ref()
                    .map_or_else(|| "augur-target".into(), |t| t.display().to_string()),
                target_size,
                speed,
                align,
            };
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let st = augur::fio::write_iolog(&ios, &opts, &mut w).map_err(|e| match e {
                augur::fio::IologError::BadOptions(m) => anyhow::Error::new(CliError::BadFlag(m)),
                e => anyhow::Error::new(e).context(format!("writing {}", out.display())),
            })?;
            println!(
                "{}: {} reads ({} bytes) and {} writes ({} bytes) over {:.3} s written to {}; {} offsets wrapped into {} bytes, {} flushes/discards left out, {} malformed line(s) skipped",
                input.display(),
                st.reads,
                st.read_bytes,
                st.writes,
                st.write_bytes,
                st.last_us as f64 / 1e6,
                out.display(),
                st.wrapped,
                target_size,
                st.skipped_ops,
                trace.skipped
            );
            for e in &trace.skipped_examples {
                eprintln!("  skipped: {e}");
            }
        }
    }
    Ok(())
}
