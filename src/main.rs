//! kbackup: parse, load settings, start logging, dispatch, map errors to exit codes.

mod archive;
mod checks;
mod cleanup;
mod cli;
mod clients;
mod clock;
mod commands;
mod config;
mod container_fs;
mod crypto;
mod databases;
mod dump;
mod error;
mod index;
mod leftovers;
mod lifecycle;
mod logging;
mod manifest;
mod metrics;
mod naming;
mod notify;
mod offsite;
mod output;
mod owner;
mod postgres;
mod process;
mod progress;
mod readback;
mod remote;
mod retention;
mod roles;
mod rotation;
mod secrets;
mod select;
mod sql;
mod state;
mod store;
mod take;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Cli, Command};
use crate::error::{exit_kind, ExitKind};

/// This process's peak resident memory (VmHWM), in kB.
fn peak_rss_kb() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Printed from the command line's own definition: no settings needed.
    let printed = match &cli.command {
        Command::Completions(a) => Some(commands::completions::run(a)),
        Command::Man => Some(commands::man::run()),
        _ => None,
    };
    if let Some(r) = printed {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ERROR: {e:#}");
                ExitCode::from(ExitKind::Failure as u8)
            }
        };
    }
    let cfg = match config::load(&cli.global) {
        Ok(c) => c,
        Err(failure) => return settings_failed(&cli, failure),
    };
    // Commands that change the store also append to BACKUP_DIR/backup.log.
    let dry_run = match &cli.command {
        Command::Backup(a) => Some(a.dry_run),
        Command::Rotate(a) => Some(a.dry_run),
        Command::Cleanup(a) => Some(a.dry_run),
        Command::Restore(a) => Some(a.dry_run),
        _ => None,
    };
    let writes_store = match &cli.command {
        Command::Verify(_) | Command::Sync => true,
        _ => dry_run == Some(false),
    };
    // A dry run and doctor write nothing into the store, not even its index.
    if dry_run == Some(true) || matches!(cli.command, Command::Doctor(_)) {
        index::dry_run();
    }
    let log_dir = writes_store.then_some(cfg.backup_dir.as_path());
    if writes_store {
        cleanup::journal_in(&cfg.backup_dir);
    }
    if let Err(e) = logging::init(cfg.log_format, cfg.debug, cfg.calendar.zone, log_dir) {
        eprintln!("ERROR: {e:#}");
        return ExitCode::from(ExitKind::Failure as u8);
    }

    progress::init(cfg.log_format == crate::cli::LogFormat::Text);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        // Dropping the command's future on a signal drops its temporary files and
        // kills its children (kill_on_drop).
        let stopped = |kind, signal: &str| Err((kind, signal.to_string()));
        let outcome = tokio::select! {
            r = dispatch(&cli.command, &cfg) => Ok(r),
            _ = int.recv() => stopped(ExitKind::Interrupted, "interrupted (SIGINT)"),
            _ = term.recv() => stopped(ExitKind::Terminated, "terminated (SIGTERM)"),
            _ = hup.recv() => stopped(ExitKind::Hangup, "hung up (SIGHUP)"),
        };
        // No bar is left drawn under what follows.
        progress::stop();
        // Whatever way the command ended, the undo guards it left armed run now:
        // what it did on the server is undone, its temporary files removed.
        let notices = cleanup::run_pending().await;
        cleanup::end_run();
        let outcome = outcome.map(|r| r.map_err(|e| error::explain(e, &cfg.backup_dir)));
        let result = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if notices.is_empty() => Err(e),
            Ok(Err(e)) => Err(e.context(notices.join(" "))),
            Err((kind, signal)) => {
                // What finished before the signal stays (a run over several
                // databases may have published some of them).
                let kept = take::published();
                let kept = if kept.is_empty() {
                    "nothing was kept from this run".to_string()
                } else {
                    format!("backups finished before it are kept: {}", kept.join(", "))
                };
                Err(anyhow::Error::new(error::Coded {
                    kind,
                    message: if notices.is_empty() {
                        format!("{signal}: stopped; partial work was undone and {kept}")
                    } else {
                        format!("{signal}: stopped ({kept}). {}", notices.join(" "))
                    },
                }))
            }
        };
        // Every failure of a job alerts, once: commands alert with their own
        // words where they know more; whatever failed without one alerts here.
        if let (Err(e), Some(kind)) = (&result, alert_kind(&cli.command)) {
            if error::alerts(e) && !notify::alerted() {
                notify::alert(
                    &cfg,
                    notify::Alert {
                        kind,
                        title: format!("kbackup {} of {} failed", kind.name(), cfg.db.name),
                        body: format!("{e:#}"),
                    },
                )
                .await;
            }
        }
        // The error first, then the alerts that carry it.
        if let Err(e) = &result {
            tracing::error!("{e:#}");
        }
        notify::send_queued(&cfg).await;
        // kbackup's own peak memory, children apart (the benchmark reads it).
        if let Some(kb) = peak_rss_kb() {
            tracing::debug!("peak RSS of kbackup itself: {kb} kB");
        }
        result
    });
    // After a signal, a blocking read (the confirmation prompt) may never
    // return: do not wait for it.
    let signalled = result.as_ref().is_err_and(|e| {
        matches!(
            exit_kind(e),
            ExitKind::Interrupted | ExitKind::Terminated | ExitKind::Hangup
        )
    });
    if signalled {
        runtime.shutdown_background();
    } else {
        runtime.shutdown_timeout(Duration::from_secs(2));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(exit_kind(&e) as u8),
    }
}

/// Settings that cannot be used: said on stderr (and in backup.log when the
/// store is known), and, for a job cron runs, alerted through whatever alert
/// channels are set: a broken .env must page someone, not stop backups silently.
fn settings_failed(cli: &Cli, failure: config::LoadFailure) -> ExitCode {
    let e = failure.error;
    let code = ExitCode::from(exit_kind(&e) as u8);
    // doctor's first check, failed: its line (its JSON) all the same.
    if let Command::Doctor(a) = &cli.command {
        commands::doctor::settings_failed(&e, a.json);
        return code;
    }
    let kind = alert_kind(&cli.command);
    let Some(alerting) = failure.alerting.filter(|_| kind.is_some()) else {
        eprintln!(
            "[{}] ERROR: {e:#}",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
        );
        return code;
    };
    let kind = kind.expect("filtered above");
    let _ = logging::init(
        cli::LogFormat::Text,
        false,
        clock::Zone::Local,
        alerting.log_dir.as_deref(),
    );
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!("{e:#}");
        return code;
    };
    tracing::error!("{e:#}");
    runtime.block_on(async {
        notify::alert(
            &*alerting,
            notify::Alert {
                kind,
                title: format!(
                    "kbackup {} of {} cannot start: its settings are wrong",
                    kind.name(),
                    alerting.db
                ),
                body: format!("{e:#}"),
            },
        )
        .await;
        notify::send_queued(&*alerting).await;
    });
    code
}

/// The commands that do a job (run by cron, or by hand to change things): their
/// failures alert. Dry runs, reports (list, status, config) and `notify --test` do not.
fn alert_kind(command: &Command) -> Option<notify::Kind> {
    match command {
        Command::Backup(a) if !a.dry_run => Some(notify::Kind::Backup),
        Command::Restore(a) if !a.dry_run => Some(notify::Kind::Restore),
        Command::Verify(_) => Some(notify::Kind::Verify),
        Command::Sync => Some(notify::Kind::Sync),
        Command::Rotate(a) if !a.dry_run => Some(notify::Kind::Rotate),
        Command::Cleanup(a) if !a.dry_run => Some(notify::Kind::Cleanup),
        _ => None,
    }
}

async fn dispatch(command: &Command, cfg: &config::Config) -> anyhow::Result<()> {
    match command {
        Command::Backup(a) => commands::backup::run(cfg, a).await,
        Command::List(a) if a.remote => commands::list::run_remote(cfg, a).await,
        Command::List(a) => commands::list::run(cfg, a),
        Command::Restore(a) => {
            crypto::init(cfg.identity.as_deref())?;
            commands::restore::run(cfg, a).await
        }
        Command::Rotate(a) => commands::rotate::run(cfg, a).await,
        Command::Cleanup(a) => commands::cleanup::run(cfg, a).await,
        Command::Verify(a) => {
            crypto::init(cfg.identity.as_deref())?;
            commands::verify::run(cfg, a).await
        }
        Command::Status(a) => commands::status::run(cfg, a).await,
        Command::Sync => commands::sync::run(cfg).await,
        Command::Notify(a) => commands::notify::run(cfg, a).await,
        Command::Config(a) => commands::config::run(cfg, a),
        Command::Doctor(a) => commands::doctor::run(cfg, a).await,
        // Handled before the settings are read.
        Command::Completions(_) | Command::Man => Ok(()),
    }
}
