//! Progress on a terminal (indicatif): bytes and rate while a dump streams or
//! a backup is read back, the phase a restore or verify is in. Drawn only
//! when stderr is a terminal and the log format is text; under cron, in CI,
//! with `--log-format json` or into backup.log nothing is drawn, and every
//! call here does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static ON: AtomicBool = AtomicBool::new(false);
/// The bars drawn now: a run stopped by a signal clears them before it says so.
static ACTIVE: std::sync::Mutex<Vec<std::sync::Weak<Bar>>> = std::sync::Mutex::new(Vec::new());

/// Clears every bar and draws no more (a signal: the lines that follow are
/// the run's last words, never appended to a bar).
pub fn stop() {
    ON.store(false, Ordering::Relaxed);
    let active = std::mem::take(&mut *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for bar in active.iter().filter_map(std::sync::Weak::upgrade) {
        bar.0.finish_and_clear();
    }
}

fn shown(bar: ProgressBar) -> Progress {
    let bar = std::sync::Arc::new(Bar(bar));
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    active.retain(|w| w.strong_count() > 0);
    active.push(std::sync::Arc::downgrade(&bar));
    Progress(Some(bar))
}

/// Decided once by main: a terminal on stderr, and text logs.
pub fn init(text_logs: bool) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    ON.store(terminal && text_logs, Ordering::Relaxed);
}

/// A bar (or spinner), or nothing when progress is off. Cheap to clone; the
/// last clone dropped clears it (an error path never leaves a bar drawn).
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<Bar>>);

pub struct Bar(ProgressBar);

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl std::ops::Deref for Bar {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.0
    }
}

impl Progress {
    /// Bytes through a stream of `total` bytes when known: `what`, bytes, rate.
    pub fn bytes(what: &str, total: Option<u64>) -> Progress {
        match total {
            Some(_) => draw(
                what,
                total,
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            ),
            None => draw(
                what,
                None,
                "{spinner} {prefix} {bytes} {binary_bytes_per_sec} {msg}",
            ),
        }
    }

    /// A phase with no measure but time: `what`, elapsed.
    pub fn phase(what: &str) -> Progress {
        draw(what, None, "{spinner} {prefix} ({elapsed}) {msg}")
    }

    /// Items of a known count: `what`, a bar, `done/total unit`, elapsed.
    pub fn count(what: &str, total: u64, unit: &str) -> Progress {
        draw(
            what,
            Some(total),
            &format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})"),
        )
    }

    /// Whether anything is drawn.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub fn add(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    pub fn message(&self, text: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(b) = &self.0 {
            b.set_message(text);
        }
    }

    /// Removes the bar (the log line that follows says the outcome).
    pub fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// A bar (of `total`, else a spinner) drawn with `template`, or nothing
/// when progress is off.
fn draw(what: &str, total: Option<u64>, template: &str) -> Progress {
    if !ON.load(Ordering::Relaxed) {
        return Progress(None);
    }
    let style = ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(style);
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    shown(bar)
}

/// A reader that counts what passes into `progress`.
pub struct Counting<R> {
    pub inner: R,
    pub progress: Progress,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}
