//! Progress bars on standard error (hidden automatically when it is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items with a message slot for live numbers (loss, throughput).
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
