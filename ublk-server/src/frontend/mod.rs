//! The block-device front-ends: how requests reach an [`Array`](crate::Array).
//!
//! - [`ublk`]: `/dev/ublkbN` through the kernel's ublk driver (io_uring);
//!   one thread per ublk queue, each owning its own array queue.
//! - [`fuse`]: one file, `disk.img`, in a FUSE mount (with an optional loop
//!   device on top), where the kernel has no ublk.

pub mod fuse;
pub mod ublk;
