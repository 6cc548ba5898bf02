//! kbackup: parse, load settings, start logging, dispatch, map errors to exit codes.

mod archive;
mod checks;
mod cleanup;
mod cli;
mod clients;
mod clock;
mod commands;
mod config;
mod dump;
mod error;
mod logging;
mod manifest;
mod metrics;
mod naming;
mod notify;
mod postgres;
mod process;
mod remote;
mod retention;
mod select;
mod state;
mod store;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Cli, Command};
use crate::error::{exit_kind, ExitKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match config::load(&cli.global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "[{}] ERROR: {e:#}",
                chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
            );
            return ExitCode::from(exit_kind(&e) as u8);
        }
    };
    // Commands that change the store also append to BACKUP_DIR/backup.log.
    let writes_store = match &cli.command {
        Command::Backup(a) => !a.dry_run,
        Command::Rotate(a) => !a.dry_run,
        Command::Restore(a) => !a.dry_run,
        Command::Verify(_) | Command::Sync => true,
        _ => false,
    };
    let log_dir = writes_store.then_some(cfg.backup_dir.as_path());
    if let Err(e) = logging::init(cfg.log_format, cfg.debug, cfg.calendar.zone, log_dir) {
        eprintln!("ERROR: {e:#}");
        return ExitCode::from(ExitKind::Failure as u8);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        // Dropping the command's future on a signal drops its temporary files and
        // kills its children (kill_on_drop): the store is left as it was.
        let interrupted = |kind, signal: &str| {
            Err(anyhow::Error::new(error::Coded {
                kind,
                message: format!(
                    "{signal}: stopped; partial work was undone and nothing was kept from this run"
                ),
            }))
        };
        let result = tokio::select! {
            r = dispatch(&cli.command, &cfg) => r,
            _ = int.recv() => interrupted(ExitKind::Interrupted, "interrupted (SIGINT)"),
            _ = term.recv() => interrupted(ExitKind::Terminated, "terminated (SIGTERM)"),
        };
        // The command's future is gone now: its children are killed and its
        // temporary files removed. What it did on the server is undone here.
        if result
            .as_ref()
            .is_err_and(|e| matches!(exit_kind(e), ExitKind::Interrupted | ExitKind::Terminated))
        {
            cleanup::run_pending().await;
        }
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(exit_kind(&e) as u8)
        }
    }
}

async fn dispatch(command: &Command, cfg: &config::Config) -> anyhow::Result<()> {
    match command {
        Command::Backup(a) => commands::backup::run(cfg, a).await,
        Command::List(a) if a.remote => commands::list::run_remote(cfg, a).await,
        Command::List(a) => commands::list::run(cfg, a),
        Command::Restore(a) => commands::restore::run(cfg, a).await,
        Command::Rotate(a) => commands::rotate::run(cfg, a).await,
        Command::Verify(a) => commands::verify::run(cfg, a).await,
        Command::Status(a) => commands::status::run(cfg, a),
        Command::Sync => commands::sync::run(cfg).await,
        Command::Notify(a) => commands::notify::run(cfg, a).await,
        Command::Config(a) => commands::config::run(cfg, a),
    }
}
