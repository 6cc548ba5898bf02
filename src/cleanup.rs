//! Undo actions for the moment a run is interrupted.
//!
//! A restore that has created a scratch database, or closed the target to new
//! connections, registers the SQL that undoes it. On Ctrl-C/SIGTERM, `main` drops
//! the command (killing its children) and then runs what is registered, so the
//! target is left as it was and no scratch database survives.

use std::sync::Mutex;
use std::time::Duration;

use crate::postgres::Postgres;

struct Action {
    id: u64,
    pg: Postgres,
    statements: Vec<String>,
}

static PENDING: Mutex<Vec<Action>> = Mutex::new(Vec::new());
static NEXT: Mutex<u64> = Mutex::new(0);

/// A registered undo action. It stays registered until [`done`](Registered::done):
/// dropping it (as an interrupt drops the command's future) keeps it, so that
/// `run_pending` finds it.
#[must_use = "call done() once the step is over or undone"]
pub struct Registered(u64);

impl Registered {
    /// The step is over (or was undone on the normal path): forget the action.
    pub fn done(self) {
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a| a.id != self.0);
    }
}

/// Registers statements (run on the maintenance database) that undo a step if
/// the run is interrupted before the step is over.
pub fn register(pg: &Postgres, statements: Vec<String>) -> Registered {
    let mut n = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    *n += 1;
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Action {
            id: *n,
            pg: pg.clone(),
            statements,
        });
    Registered(*n)
}

/// Runs every registered undo action, newest first. Called after an interrupt.
pub async fn run_pending() {
    let actions: Vec<Action> =
        std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    for a in actions.into_iter().rev() {
        let what = a.statements.join("; ");
        tracing::warn!("Interrupted: undoing: {what}");
        if let Err(e) =
            a.pg.admin(&a.statements, Some(Duration::from_secs(30)))
                .await
        {
            tracing::error!("could not undo ({what}): {e:#}");
        }
    }
}
