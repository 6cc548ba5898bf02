//! Log lines in the seed's form, `[2025-12-26 07:00:01] Starting backup...`, on
//! stderr and appended to BACKUP_DIR/backup.log; or JSON lines (`--log-format json`).

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use chrono::Utc;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
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
            self.zone.to_local(Utc::now()).format("%Y-%m-%d %H:%M:%S")
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

/// Installs the global subscriber. `log_dir`, when given, receives backup.log (0600).
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
    let file = match log_dir {
        Some(dir) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(dir.join(LOG_FILE))
                .map_err(|e| {
                    anyhow::anyhow!("cannot open {}: {e}", dir.join(LOG_FILE).display())
                })?,
        ),
        None => None,
    };
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
                .with_writer(Mutex::new(f))
                .with_filter(EnvFilter::new(level))
                .boxed(),
            LogFormat::Json => json()
                .with_writer(Mutex::new(f))
                .with_filter(EnvFilter::new(level))
                .boxed(),
        });
    }
    tracing_subscriber::registry().with(layers).try_init()?;
    Ok(())
}
