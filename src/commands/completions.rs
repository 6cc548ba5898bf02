//! `kbackup completions SHELL`: a completion script on stdout (clap_complete),
//! from the same clap definition the binary parses with.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "kbackup", &mut out);
    crate::out!("{}", String::from_utf8_lossy(&out).trim_end());
    Ok(())
}
