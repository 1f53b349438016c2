//! What the command line tells about itself: shell completions, manual pages and the version.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::Cli;

/// The name the binary is installed as.
const BINARY: &str = "tokengate";

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), BINARY, out);
}

/// The command line as manual pages see it: every command, without clap's `help` subcommand.
fn manual_command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

/// Writes the page tokengate(1): every flag of the top level and a list of the commands.
pub fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(manual_command()).render(out)
}

/// Writes one page per command into `dir` (tokengate.1, tokengate-serve.1,
/// tokengate-policy-validate.1, ...), creating it when missing; returns the files written.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_pages(manual_command(), dir, &mut written)?;
    Ok(written)
}

fn write_pages(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    written.push(clap_mangen::Man::new(command.clone()).generate_to(dir)?);
    for subcommand in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(subcommand.clone(), dir, written)?;
    }
    Ok(())
}

/// `tokengate VERSION`, then the platform and, when the build environment set
/// TOKENGATE_GIT_COMMIT, the commit.
pub fn version() -> String {
    let mut text = format!(
        "{BINARY} {}\nplatform: {}-{}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    if let Some(commit) = option_env!("TOKENGATE_GIT_COMMIT").filter(|c| !c.is_empty()) {
        text.push_str(&format!("commit: {commit}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_starts_as_dash_dash_version_does() {
        let version = version();
        let first = version.lines().next().expect("a line");
        assert_eq!(first, Cli::command().render_version().trim_end());
    }
}
