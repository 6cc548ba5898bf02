//! `kbackup man`: the manual page in roff on stdout (clap_mangen), from the
//! same clap definition the binary parses with, each subcommand included.

use clap::CommandFactory;

use crate::cli::Cli;

pub fn run() -> anyhow::Result<()> {
    let command = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    // One page: the subcommands follow as sections of their own.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_uppercase();
        out.extend_from_slice(format!(".SH \"KBACKUP {name}\"\n").as_bytes());
        let sub = sub.clone().bin_name(format!("kbackup {}", sub.get_name()));
        let man = clap_mangen::Man::new(sub);
        man.render_description_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_options_section(&mut out)?;
    }
    crate::out!("{}", String::from_utf8_lossy(&out).trim_end());
    Ok(())
}
