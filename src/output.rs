//! What commands print on stdout. A reader that goes away (`kbackup list |
//! head -2`) is a normal end, as for ripgrep and git: printing stops, the
//! command finishes its work and exits as it would have (no panic, no signal).
//! Only stdout is treated so; the work itself (a restore half-way through its
//! swap) is never cut short by a closed pipe.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout; after the reader has gone, nothing.
pub fn line(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    if written.is_err() {
        // EPIPE, or stdout closed or full: stop printing, carry on working.
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Writes many lines at once (each ending in a newline): a listing of
/// thousands of backups in one write, not one per line.
pub fn block(text: &str) {
    if CLOSED.load(Ordering::Relaxed) || text.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` for command output, ending quietly when stdout's reader is gone.
#[macro_export]
macro_rules! out {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::output::line(format_args!($($t)*))
    };
}
