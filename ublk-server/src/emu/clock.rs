//! The clocks the array runs on.
//!
//! Everything that routes, records features or emulates takes its time from
//! the [`Clock`] of its array, never from the wall: the same code then runs
//! on the real clock (the io_uring data path, which measures overhead) and
//! on the simulated one (a discrete-event loop with no I/O, which measures
//! decision quality exactly and identically on every machine).
//!
//! The simulated clock only moves when the array's queue moves it: to the
//! next event when it waits, or by the cost of a prediction batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Simulated time in nanoseconds, shared by an array and its queue.
#[derive(Debug, Default)]
pub struct SimTime(AtomicU64);

impl SimTime {
    /// The current simulated time.
    pub fn now_ns(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Moves the clock forward to `t` (never back).
    pub fn advance_to(&self, t: u64) {
        if t > self.now_ns() {
            self.0.store(t, Relaxed);
        }
    }

    /// Moves the clock forward by `ns`.
    pub fn advance_by(&self, ns: u64) {
        self.0.store(self.now_ns().saturating_add(ns), Relaxed);
    }
}

/// Where an array's time comes from: nanoseconds since it opened.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The monotonic wall clock, from this instant.
    Real(Instant),
    /// Simulated time, moved by the array's queue.
    Sim(Arc<SimTime>),
}

impl Clock {
    /// A real clock starting now.
    pub fn real() -> Clock {
        Clock::Real(Instant::now())
    }

    /// A simulated clock starting at 0.
    pub fn simulated() -> Clock {
        Clock::Sim(Arc::new(SimTime::default()))
    }

    /// Nanoseconds since the clock started.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Real(t) => t.elapsed().as_nanos() as u64,
            Clock::Sim(s) => s.now_ns(),
        }
    }

    /// True for simulated time.
    pub fn is_simulated(&self) -> bool {
        matches!(self, Clock::Sim(_))
    }

    /// Short name for reports: `real` or `sim`.
    pub fn name(&self) -> &'static str {
        match self {
            Clock::Real(_) => "real",
            Clock::Sim(_) => "sim",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_time_moves_only_forward_and_only_when_told() {
        let c = Clock::simulated();
        let Clock::Sim(t) = &c else { unreachable!() };
        assert_eq!(c.now_ns(), 0);
        t.advance_to(500);
        t.advance_to(100);
        assert_eq!(c.now_ns(), 500);
        t.advance_by(25);
        assert_eq!(c.now_ns(), 525);
        assert!(c.is_simulated() && c.name() == "sim");
        let r = Clock::real();
        assert!(!r.is_simulated());
        let a = r.now_ns();
        assert!(r.now_ns() >= a);
    }
}
