//! Log lines in the seed's form, `[2025-12-26 07:00:01] Starting backup...`, on
//! stderr and appended to BACKUP_DIR/backup.log; or JSON lines (`--log-format json`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;
use crate::clock::Zone;

pub const LOG_FILE: &str = "backup.log";

struct SeedFormat {
    zone: Zone,
}

impl<S, N> FormatEvent<S, N> for SeedFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(
            w,
            "[{}] ",
            self.zone.local_time(Utc::now()).format("%Y-%m-%d %H:%M:%S")
        )?;
        match *event.metadata().level() {
            Level::ERROR => write!(w, "ERROR: ")?,
            Level::WARN => write!(w, "WARNING: ")?,
            Level::DEBUG | Level::TRACE => write!(w, "DEBUG: ")?,
            Level::INFO => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Appends to BACKUP_DIR/backup.log (0600), opened at the first line written and
/// only once the store exists: a run stopped by bad input creates nothing.
struct LazyLogFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Write for &LazyLogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            // Only into a store that exists and that nobody else can write.
            if !self
                .path
                .parent()
                .is_some_and(|d| d.exists() && crate::store::check_root(d).is_ok())
            {
                return Ok(buf.len());
            }
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    // Never through a symlink planted in the store.
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&self.path)?,
            );
        }
        guard.as_mut().expect("opened above").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LazyLogFile {
    type Writer = &'a LazyLogFile;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Installs the global subscriber. `log_dir`, when given, receives backup.log.
pub fn init(
    format: LogFormat,
    debug: bool,
    zone: Zone,
    log_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let level = if debug {
        "kbackup=debug"
    } else {
        "kbackup=info"
    };
    let file = log_dir.map(|dir| LazyLogFile {
        path: dir.join(LOG_FILE),
        file: Mutex::new(None),
    });
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let text = || {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(SeedFormat { zone })
    };
    let json = || tracing_subscriber::fmt::layer().with_ansi(false).json();
    let mut layers: Vec<Boxed> = Vec::new();
    layers.push(match format {
        LogFormat::Text => text()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::new(level))
            .boxed(),
        LogFormat::Json => json()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::new(level))
            .boxed(),
    });
    if let Some(f) = file {
        layers.push(match format {
            LogFormat::Text => text()
                .with_writer(f)
                .with_filter(EnvFilter::new(level))
                .boxed(),
            LogFormat::Json => json()
                .with_writer(f)
                .with_filter(EnvFilter::new(level))
                .boxed(),
        });
    }
    tracing_subscriber::registry().with(layers).try_init()?;
    Ok(())
}
