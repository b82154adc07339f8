//! One module per subcommand.

pub mod bench;
pub mod keys;
pub mod models;
pub mod peer;
pub mod run;
pub mod split;
pub mod stepfn;
pub mod study;
pub mod train;
