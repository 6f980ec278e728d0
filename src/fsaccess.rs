//! Moved to [`crate::sys::landlock`], the `Sys` seam's own; this name stays only until the
//! callers outside `sys` (run, check) use the new one.

pub use crate::sys::landlock::kernel_abi;
