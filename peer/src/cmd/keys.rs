//! `peerless keys generate`: one signing key per rank and the run's public roster.

use anyhow::{Context, Result};

use crate::cli::KeysGenerateArgs;

pub fn generate(args: KeysGenerateArgs) -> Result<()> {
    peerless_comm::auth::generate(&args.out, args.size).with_context(|| {
        format!(
            "writing keys for {} peers to {}",
            args.size,
            args.out.display()
        )
    })?;
    println!(
        "wrote {} private keys and {} to {}: give each peer its own rank-R.key and the roster",
        args.size,
        peerless_comm::auth::ROSTER_FILE,
        args.out.display()
    );
    Ok(())
}
