//! One module per subcommand.

pub mod bench;
pub mod models;
pub mod split;
pub mod train;
