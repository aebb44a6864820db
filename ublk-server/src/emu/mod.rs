//! Emulated flash: a seeded, deterministic latency model for one replica.
//!
//! Real SSD tail behaviour cannot be seen on a VM disk, so a replica can be
//! `emu:` — real data in a backing file, with completions delayed by this
//! model. [`FlashEmu`] holds no data and never sleeps: given
//! `(now_ns, op, offset, len)` it returns when the I/O completes
//! ([`Outcome::CompleteAt`]) or that it fails ([`Outcome::Fail`]); the caller
//! delays the completion. Same [`Profile`], seed and call sequence give the
//! same outcomes. `submit` is O(1) (a flush is O(channels)) and allocates
//! nothing.
//!
//! # The model
//!
//! Per I/O, in order:
//!
//! 1. **Fault.** If [`FlashEmu::inject_failure`] was called, or
//!    `fault.after_ios` I/Os have already been submitted, or
//!    `now >= fault.at_ms`, the I/O fails, and so does every later one.
//! 2. **Channel.** Reads, writes, discards and write-zeroes go to channel
//!    `(offset / 64 KiB) % channels` and queue behind it:
//!    `start = max(now, busy_until[ch])`; afterwards
//!    `busy_until[ch] = completion`. A flush holds no channel; it starts once
//!    every channel has drained (`max(now, max busy_until)`).
//! 3. **GC stall.** If a GC window covers `start` and `gc.read_stall`, a read
//!    starts when the window ends — or, with `gc.read_block_fraction` set,
//!    only a read on one of the channels the window erases (each channel is
//!    picked with that probability when the window opens, at least one) and
//!    arriving while an erase runs waits for that erase to finish: erasing
//!    channels cycle through `gc.erase_ms` of erase and `gc.erase_gap_ms` of
//!    idle time from the window's start. A write started inside a window has
//!    its service time multiplied by `gc.write_slowdown`.
//! 4. **Service time** (µs): read `read_base_us + read_us_per_kib * KiB`,
//!    write `write_base_us + write_us_per_kib * KiB`, flush `flush_us`,
//!    discard and write-zeroes `discard_us`.
//! 5. **Noisy neighbour.** If a busy period covers `start`, the service time
//!    is multiplied by `noisy_neighbor.slowdown`.
//! 6. **Jitter.** The service time is multiplied by `exp(jitter * Z)`,
//!    `Z ~ N(0, 1)` (log-normal, median 1), one draw per I/O from the jitter
//!    stream (none when `jitter == 0`).
//! 7. `completion = start + service` (at least 1 ns).
//!
//! **GC windows.** Bytes written by `Write`s accumulate. Each time they
//! cross a threshold of `gc.trigger_mib * (1 + gc.trigger_jitter * U(-1,1))`
//! MiB (a fresh draw per threshold), a window of
//! `gc.duration_ms * (1 + gc.duration_jitter * U(-1,1))` starts at the
//! triggering write's arrival (or right after the current window, if one is
//! running). The initial accumulated amount is a uniform fraction of the
//! first threshold, drawn from the seed, so replicas do not GC in lock-step.
//!
//! **Noisy neighbour.** Busy periods alternate with quiet gaps: gaps are
//! exponential with mean `mean_interval_ms`, periods exponential with mean
//! `mean_duration_ms` (about one period per `mean_interval_ms +
//! mean_duration_ms`). They are generated lazily from their own seeded
//! stream as time advances, so they depend only on seed and time, never on
//! the I/O sequence.
//!
//! Seeds: SplitMix64 of the seed gives three independent xoshiro256**
//! streams (jitter, GC, noisy neighbour); see the `augur-rng` crate.
//!
//! **Oracle.** [`FlashEmu::peek_read_latency`] is pure and exact: it
//! includes the jitter the next draw would give, so a read submitted right
//! after at the same `now` completes exactly `peek` ns later. It is the best
//! any predictor could do. [`FlashEmu::is_stalled`] says whether a GC window
//! or busy period covers `now`.
//!
//! # Profile parameters
//!
//! See [`Profile`], [`GcConfig`], [`NoisyConfig`] and [`FaultConfig`]; all
//! times in µs unless the name ends in `_ms`. Built-ins (TOML files in
//! `ublk-server/profiles/`, embedded with `include_str!`):
//!
//! | profile | channels | 4 KiB read / write | jitter σ | GC | noisy neighbour |
//! |---|---|---|---|---|---|
//! | `fast-nvme` | 8 | 80 / 20 µs | 0.15 | every 512 MiB ±50 %, 1 ms ±50 % | — |
//! | `gc-heavy` | 8 | 90 / 24 µs | 0.2 | every 256 MiB ±50 %, 240 ms ±50 %; half the channels erase (3 ms erase, 1 ms gap) and block reads; writes ×4 | — |
//! | `noisy-neighbor` | 8 | 80 / 20 µs | 0.15 | — | gap 800 ms, period 50 ms, ×10 |
//!
//! # Simulated read latency
//!
//! One replica on the simulated clock ([`Clock`]: the array's own queue,
//! router and emulator in simulated time), closed loop at depth 16, 70/30
//! random 4 KiB, seed 1, 2 simulated seconds (run
//! `cargo test -p augur --lib emu::tests::print_builtin_profile_latencies -- --nocapture`):
//!
//! | profile | read p50 µs | p99 µs | p99.9 µs | max µs | IOPS |
//! |---|---|---|---|---|---|
//! | `fast-nvme` | 150 | 560 | 731 | 940 | 97 402 |
//! | `gc-heavy` | 171 | 713 | 3 067 | 3 291 | 79 881 |
//! | `noisy-neighbor` | 151 | 612 | 2 711 | 5 875 | 93 648 |
//!
//! (Depth 16 on 8 channels keeps the device busy, so p50 includes channel
//! queueing: it is about twice the unloaded 80 µs read.)
//!
//! The three-replica tables by policy: `augur bench --clock sim --profile
//! NAME --policy baseline,hedge,linnos,oracle` (see the README).
//! `emu::tests::array_oracle_halves_baseline_tail` checks, on the simulated
//! clock, that the oracle at least halves baseline p99.9 and that baseline
//! p99.9 exceeds 2 ms on the profiles with stalls.

pub mod clock;
pub mod device;
pub mod profile;

#[cfg(test)]
mod tests;

pub use clock::{Clock, SimTime};
pub use device::{CHANNEL_STRIPE_BYTES, EmuStats, FlashEmu, Outcome};
pub use profile::{FaultConfig, GcConfig, NoisyConfig, Profile, ProfileError};

/// Operation kinds the emulator distinguishes (the feature store's).
pub use augur_feature_store::Op;
