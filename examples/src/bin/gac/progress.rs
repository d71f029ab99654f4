//! Progress on stderr with indicatif: bars and spinners on a terminal, nothing when stderr is
//! not one (callers print one final line either way).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` items with rate and ETA, labelled `gac {tool}: {prefix}`.
pub fn bar(tool: &str, total: usize, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    let template = format!(
        "gac {tool}: {{prefix}} {{bar:24}} {{pos}}/{{len}} {{msg}} {{per_sec}} ETA {{eta}}"
    );
    bar.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    bar.set_prefix(prefix.to_string());
    bar
}

/// A spinner with the elapsed time, for work of unknown length.
pub fn spinner(message: String) -> ProgressBar {
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    spinner.set_style(
        ProgressStyle::with_template("gac: {spinner} {msg} {elapsed}").expect("a valid template"),
    );
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

/// Set by `-q`: status lines are left out.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `-q` asked for results and errors only.
pub(crate) fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets what [`quiet`] answers (from `-q`).
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}
