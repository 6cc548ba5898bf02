//! One module per subcommand; each is orchestration only.

pub mod backup;
pub mod config;
pub mod list;
pub mod notify;
pub mod restore;
pub mod rotate;
pub mod status;
pub mod sync;
pub mod verify;
