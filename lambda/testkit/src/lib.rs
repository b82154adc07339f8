//! Local stand-ins for the cloud services the tests talk to, shared by the tests of
//! `peerless-data`, `peerless-lambda` and `peerless` (a dev-dependency only, never a
//! dependency of the libraries or binaries):
//!
//! - [`moto::MotoServer`]: moto's server on a free loopback port, for S3 and Step Functions
//!   (with its Lambda tasks answered from queued responses).
//! - [`emulator::Emulator`]: cargo-lambda's Lambda Runtime API emulator, with the real
//!   function binaries polling it, invoked through the Lambda Invoke API as on AWS.
//! - [`lambda_router::FunctionRouter`]: the Lambda Invoke API under a deployment's function
//!   names and ARNs, in front of the emulator (which knows functions by binary name only).
//! - [`rabbit::RabbitNode`]: a private RabbitMQ node (own name, ports, data directory) that
//!   fault tests stop and restart, never a shared broker.
//! - [`faults::FaultProxy`]: an HTTP reverse proxy in front of moto that fails chosen
//!   requests (S3 error answers, dropped connections, delays) and counts what it injected.
//!
//! Each value starts its own isolated instance and stops it when dropped.

pub mod emulator;
pub mod faults;
pub mod lambda_router;
pub mod moto;
pub mod rabbit;
mod serve;
