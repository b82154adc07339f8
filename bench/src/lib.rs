//! Measurements shared by `cargo bench -p peerless-bench` and the `peerless bench`
//! subcommand, so users and developers see the same numbers.

pub mod gradstep;
pub mod study;
pub mod torch;
