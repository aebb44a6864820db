//! Latency profiles: the TOML schema, built-in profiles, parsing with
//! file-and-line errors, and validation.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Built-in profiles, embedded at compile time: `(name, file name, TOML text)`.
const BUILTINS: &[(&str, &str, &str)] = &[
    (
        "fast-nvme",
        "fast-nvme.toml",
        include_str!("../../profiles/fast-nvme.toml"),
    ),
    (
        "gc-heavy",
        "gc-heavy.toml",
        include_str!("../../profiles/gc-heavy.toml"),
    ),
    (
        "noisy-neighbor",
        "noisy-neighbor.toml",
        include_str!("../../profiles/noisy-neighbor.toml"),
    ),
];

/// Names of the built-in profiles, in the order of [`BUILTINS`].
const BUILTIN_NAMES: &[&str] = &["fast-nvme", "gc-heavy", "noisy-neighbor"];

/// A latency profile, parsed from TOML. All times in microseconds unless the
/// field name says otherwise (`_ms`). See the [module docs](super) for what
/// each parameter does in the model.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Human-readable name (the built-ins use their file stem).
    pub name: String,
    /// Internal parallel units; an I/O is served by channel
    /// `(offset / 64 KiB) % channels` and queues behind earlier I/Os there.
    pub channels: u32,
    /// Fixed part of a read's service time, µs.
    pub read_base_us: f64,
    /// Per-KiB part of a read's service time, µs.
    pub read_us_per_kib: f64,
    /// Fixed part of a write's service time, µs.
    pub write_base_us: f64,
    /// Per-KiB part of a write's service time, µs.
    pub write_us_per_kib: f64,
    /// Service time of a flush, µs (starts once every channel is idle).
    pub flush_us: f64,
    /// Service time of a discard or write-zeroes, µs (no per-KiB part).
    pub discard_us: f64,
    /// Sigma of the log-normal multiplier `exp(jitter * Z)` on service time
    /// (median 1; 0 = no jitter). Must be in `0..=2`.
    pub jitter: f64,
    /// Garbage collection (`[gc]` table); absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcConfig>,
    /// Noisy neighbour (`[noisy_neighbor]` table); absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noisy_neighbor: Option<NoisyConfig>,
    /// Fault injection (`[fault]` table); absent = never fails by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
}

/// Garbage-collection windows triggered by written volume.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Written volume (MiB) between two GC windows, on average. Must be > 0.
    pub trigger_mib: f64,
    /// Each threshold is `trigger_mib * (1 + trigger_jitter * U(-1, 1))`;
    /// a fraction in `0..1`, so replicas with different seeds drift apart.
    pub trigger_jitter: f64,
    /// Mean length of a GC window, ms.
    pub duration_ms: f64,
    /// Each window lasts `duration_ms * (1 + duration_jitter * U(-1, 1))`;
    /// a fraction in `0..1`.
    pub duration_jitter: f64,
    /// Reads that would start inside a window are blocked (see
    /// `read_block_fraction` and `erase_ms`; without them, every such read
    /// waits until the window ends).
    pub read_stall: bool,
    /// Multiplier (>= 1) on the service time of writes started inside a window.
    pub write_slowdown: f64,
    /// Fraction in `(0, 1]` of the reads started inside a window that land
    /// on a die busy erasing and are blocked; the others run normally.
    /// Unset: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_block_fraction: Option<f64>,
    /// How long a blocked read waits behind the erase, ms (each wait is
    /// `erase_ms * U(0.5, 1.5)`, never past the window's end). Unset: until
    /// the window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase_ms: Option<f64>,
    /// Idle time between two erases on an erasing channel, ms (reads run
    /// freely then). Unset: the same as `erase_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase_gap_ms: Option<f64>,
}

/// Noisy-neighbour busy periods: an alternating renewal process in time.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoisyConfig {
    /// Mean quiet gap between busy periods, ms (exponential). Must be > 0.
    pub mean_interval_ms: f64,
    /// Mean length of a busy period, ms (exponential). Must be > 0.
    pub mean_duration_ms: f64,
    /// Service-time multiplier (>= 1) for I/Os that start inside a busy period.
    pub slowdown: f64,
}

/// Scripted failure: from the first trigger on, every I/O fails with EIO.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// The first `after_ios` I/Os succeed; every later one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ios: Option<u64>,
    /// Every I/O submitted at or after this time (ms on the `now_ns` clock) fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<f64>,
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// `Profile::builtin` was given a name it does not know.
    #[error("unknown profile '{name}' (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// Comma-separated built-in names.
        known: String,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("{origin}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        /// Where the text came from (file name).
        origin: String,
        /// 1-based line of the offending text, when toml reported a span.
        line: Option<usize>,
        /// toml's message, e.g. "unknown field `chanels`, expected one of ...".
        message: String,
    },
    /// The profile parsed but a value makes no sense.
    #[error("{origin}{}: invalid `{field}`: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        /// File name, or `profile '<name>'` when validated without a file.
        origin: String,
        /// 1-based line of the field, when known.
        line: Option<usize>,
        /// Dotted field path, e.g. `gc.trigger_jitter`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The profile file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that was read.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn invalid(profile: &Profile, field: &str, reason: String) -> ProfileError {
    ProfileError::Invalid {
        origin: format!("profile '{}'", profile.name),
        line: None,
        field: field.to_string(),
        reason,
    }
}

/// Checks `v` is finite and >= 0.
fn non_negative(p: &Profile, field: &str, v: f64) -> Result<(), ProfileError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(invalid(
            p,
            field,
            format!("must be a finite number >= 0 (got {v})"),
        ))
    }
}

/// Checks `v` is finite and > 0.
fn positive(p: &Profile, field: &str, v: f64) -> Result<(), ProfileError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            p,
            field,
            format!("must be a finite number > 0 (got {v})"),
        ))
    }
}

/// Checks `v` is in `lo..=hi` (or `lo..hi` when `hi_open`).
fn in_range(
    p: &Profile,
    field: &str,
    v: f64,
    lo: f64,
    hi: f64,
    hi_open: bool,
) -> Result<(), ProfileError> {
    let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
    if ok {
        Ok(())
    } else {
        let close = if hi_open { ")" } else { "]" };
        Err(invalid(
            p,
            field,
            format!("must be in [{lo}, {hi}{close} (got {v})"),
        ))
    }
}

/// Checks `v` is finite and >= 1 (a slowdown multiplier).
fn multiplier(p: &Profile, field: &str, v: f64) -> Result<(), ProfileError> {
    if v.is_finite() && v >= 1.0 {
        Ok(())
    } else {
        Err(invalid(
            p,
            field,
            format!("must be a multiplier >= 1 (got {v})"),
        ))
    }
}

/// 1-based line number of byte offset `pos` in `s`.
fn line_of(s: &str, pos: usize) -> usize {
    let pos = pos.min(s.len());
    s.as_bytes()[..pos].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Best-effort line of a (possibly dotted) field in TOML text: the first
/// `key =` line inside the `[table]` it belongs to.
fn find_field_line(s: &str, field: &str) -> Option<usize> {
    let (table, key) = match field.rsplit_once('.') {
        Some((t, k)) => (Some(t), k),
        None => (None, field),
    };
    let mut current: Option<&str> = None;
    for (i, raw) in s.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            current = rest.split(']').next().map(str::trim);
            continue;
        }
        if current == table
            && let Some(rest) = line.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

impl Profile {
    /// A built-in profile by name: "fast-nvme", "gc-heavy" or "noisy-neighbor".
    pub fn builtin(name: &str) -> Result<Profile, ProfileError> {
        match BUILTINS.iter().find(|(n, _, _)| *n == name) {
            Some((_, file, text)) => Profile::from_toml_str(text, file),
            None => Err(ProfileError::Unknown {
                name: name.to_string(),
                known: BUILTIN_NAMES.join(", "),
            }),
        }
    }

    /// Names accepted by [`Profile::builtin`].
    pub fn builtin_names() -> &'static [&'static str] {
        BUILTIN_NAMES
    }

    /// Parses and validates a profile; errors name `origin` (a file name)
    /// and the 1-based line of the problem.
    pub fn from_toml_str(s: &str, origin: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(s).map_err(|e| ProfileError::Parse {
            origin: origin.to_string(),
            line: e.span().map(|sp| line_of(s, sp.start)),
            message: e.message().trim_end().to_string(),
        })?;
        profile.validate().map_err(|e| match e {
            ProfileError::Invalid { field, reason, .. } => ProfileError::Invalid {
                origin: origin.to_string(),
                line: find_field_line(s, &field),
                field,
                reason,
            },
            other => other,
        })?;
        Ok(profile)
    }

    /// Reads, parses and validates a profile file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let origin = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Profile::from_toml_str(&text, &origin)
    }

    /// Rejects values that make no sense, naming the field: no channels,
    /// negative or non-finite times, jitter fractions outside `0..1`,
    /// slowdowns below 1, non-positive GC trigger or noisy-neighbour means.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let p = self;
        if p.name.trim().is_empty() {
            return Err(invalid(p, "name", "must not be empty".into()));
        }
        if p.channels == 0 || p.channels > 65_536 {
            return Err(invalid(
                p,
                "channels",
                format!("must be in 1..=65536 (got {})", p.channels),
            ));
        }
        non_negative(p, "read_base_us", p.read_base_us)?;
        non_negative(p, "read_us_per_kib", p.read_us_per_kib)?;
        non_negative(p, "write_base_us", p.write_base_us)?;
        non_negative(p, "write_us_per_kib", p.write_us_per_kib)?;
        non_negative(p, "flush_us", p.flush_us)?;
        non_negative(p, "discard_us", p.discard_us)?;
        in_range(p, "jitter", p.jitter, 0.0, 2.0, false)?;
        if let Some(gc) = &p.gc {
            positive(p, "gc.trigger_mib", gc.trigger_mib)?;
            in_range(p, "gc.trigger_jitter", gc.trigger_jitter, 0.0, 1.0, true)?;
            non_negative(p, "gc.duration_ms", gc.duration_ms)?;
            in_range(p, "gc.duration_jitter", gc.duration_jitter, 0.0, 1.0, false)?;
            multiplier(p, "gc.write_slowdown", gc.write_slowdown)?;
            if let Some(f) = gc.read_block_fraction {
                positive(p, "gc.read_block_fraction", f)?;
                in_range(p, "gc.read_block_fraction", f, 0.0, 1.0, false)?;
            }
            if let Some(e) = gc.erase_ms {
                positive(p, "gc.erase_ms", e)?;
            }
            if let Some(e) = gc.erase_gap_ms {
                non_negative(p, "gc.erase_gap_ms", e)?;
            }
        }
        if let Some(n) = &p.noisy_neighbor {
            positive(p, "noisy_neighbor.mean_interval_ms", n.mean_interval_ms)?;
            positive(p, "noisy_neighbor.mean_duration_ms", n.mean_duration_ms)?;
            multiplier(p, "noisy_neighbor.slowdown", n.slowdown)?;
        }
        if let Some(f) = &p.fault
            && let Some(at) = f.at_ms
        {
            non_negative(p, "fault.at_ms", at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "t"
channels = 4
read_base_us = 80.0
read_us_per_kib = 0.0
write_base_us = 20.0
write_us_per_kib = 0.0
flush_us = 100.0
discard_us = 50.0
jitter = 0.0
"#;

    #[test]
    fn builtins_parse_and_validate() {
        assert_eq!(Profile::builtin_names().len(), BUILTINS.len());
        for name in Profile::builtin_names() {
            let p = Profile::builtin(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&p.name, name);
            p.validate().unwrap();
            // Round-trips through TOML.
            let text = toml::to_string(&p).unwrap();
            assert_eq!(Profile::from_toml_str(&text, "rt.toml").unwrap(), p);
        }
    }

    #[test]
    fn unknown_builtin_lists_known_names() {
        let e = Profile::builtin("slow-hdd").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown profile 'slow-hdd' (known: fast-nvme, gc-heavy, noisy-neighbor)"
        );
    }

    #[test]
    fn unknown_field_reports_file_and_line() {
        let text = GOOD.replace("channels = 4", "chanels = 4");
        let e = Profile::from_toml_str(&text, "gc-heavy.toml").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("gc-heavy.toml line 2: unknown field `chanels`, expected one of"),
            "{msg}"
        );
        // Unknown field inside a table.
        let text = format!("{GOOD}\n[gc]\ntrigger_mib = 1.0\ntriger_jitter = 0.1\n");
        let msg = Profile::from_toml_str(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("x.toml line 13: unknown field `triger_jitter`"),
            "{msg}"
        );
    }

    #[test]
    fn bad_value_and_syntax_errors_report_line() {
        let text = GOOD.replace("jitter = 0.0", "jitter = \"lots\"");
        let msg = Profile::from_toml_str(&text, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("p.toml line 9: "), "{msg}");
        let text = GOOD.replace("flush_us = 100.0", "flush_us = = 1");
        let msg = Profile::from_toml_str(&text, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("p.toml line 7: "), "{msg}");
        let text = GOOD.replace("discard_us = 50.0\n", "");
        let msg = Profile::from_toml_str(&text, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing field `discard_us`"), "{msg}");
    }

    #[test]
    fn validate_rejects_nonsense_naming_the_field() {
        let text = GOOD.replace("channels = 4", "channels = 0");
        let msg = Profile::from_toml_str(&text, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("p.toml line 2: invalid `channels`"),
            "{msg}"
        );

        let text = GOOD.replace("read_base_us = 80.0", "read_base_us = -1.0");
        let msg = Profile::from_toml_str(&text, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 3: invalid `read_base_us`"), "{msg}");

        let text = format!(
            "{GOOD}[gc]\ntrigger_mib = 8.0\ntrigger_jitter = 1.5\nduration_ms = 5.0\n\
             duration_jitter = 0.2\nread_stall = true\nwrite_slowdown = 2.0\n"
        );
        let msg = Profile::from_toml_str(&text, "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 12: invalid `gc.trigger_jitter`"),
            "{msg}"
        );

        let mut p = Profile::from_toml_str(GOOD, "p.toml").unwrap();
        p.noisy_neighbor = Some(NoisyConfig {
            mean_interval_ms: 0.0,
            mean_duration_ms: 1.0,
            slowdown: 10.0,
        });
        let msg = p.validate().unwrap_err().to_string();
        assert!(
            msg.starts_with("profile 't': invalid `noisy_neighbor.mean_interval_ms`"),
            "{msg}"
        );
        p.noisy_neighbor = None;
        p.jitter = f64::NAN;
        assert!(p.validate().unwrap_err().to_string().contains("`jitter`"));
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, GOOD.replace("jitter = 0.0", "jiter = 0.0")).unwrap();
        let msg = Profile::from_file(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with("mine.toml line 9: unknown field `jiter`"),
            "{msg}"
        );
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(Profile::from_file(&path).unwrap().channels, 4);
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            Profile::from_file(&missing),
            Err(ProfileError::Io { .. })
        ));
    }
}
