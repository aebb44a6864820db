//! The augur daemon and CLI: replica array, routing policies, emulated flash,
//! block-device front-ends, control and metrics.

pub mod array;
pub mod bench;
pub mod buf;
pub mod emu;
pub mod error;
pub mod fuse;
pub mod loadgen;
pub mod policy;
pub mod predict;
pub mod replica;
pub mod ublk;
