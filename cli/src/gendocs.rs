//! `certsmith completions SHELL` and `certsmith man [--dir DIR]`: shell
//! completions and manual pages, generated from the same clap definitions
//! that parse the command line.
//!
//! Why generated at run time by the binary itself (and not by a build
//! script or an xtask): what is installed then always describes the binary
//! that is installed — a packager runs `certsmith man --dir …` after the
//! build, an operator `certsmith completions bash > …`, and neither needs
//! the source tree. The README says where each file goes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use clap_complete::Shell;

use crate::output::{outln, print_error, print_json, write_stdout};
use crate::{GlobalArgs, OutputFormat, exit};

/// `certsmith completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum, value_name = "SHELL")]
    shell: Shell,
}

/// `certsmith man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write certsmith.1 and one page per subcommand (certsmith-issue.1,
    /// certsmith-account-show.1, ...) into this directory, creating it;
    /// without it, certsmith.1 goes to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Writes the completion script of `args.shell` on stdout.
pub(crate) fn completions(args: &CompletionsArgs) -> u8 {
    let mut cmd = crate::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "certsmith", &mut script);
    write_stdout(format_args!("{}", String::from_utf8_lossy(&script)));
    exit::OK
}

/// The command as the man pages show it: no `help` subcommand (every
/// command's page lists `-h, --help` already).
fn man_command() -> clap::Command {
    let mut cmd = crate::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The page of `cmd` and those of its subcommands, depth first, as
/// (file name, roff text).
fn pages(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("certsmith manual");
    let mut text = Vec::new();
    man.render(&mut text)?;
    out.push((man.get_filename(), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, out)?;
    }
    Ok(())
}

/// Writes the manual pages.
pub(crate) fn man(global: &GlobalArgs, args: &ManArgs) -> u8 {
    let mut all = Vec::new();
    if let Err(e) = pages(&man_command(), &mut all) {
        print_error(&format!("cannot render the manual pages: {e}"), None);
        return exit::INTERNAL;
    }
    let Some(dir) = &args.dir else {
        let top = all.first().map(|(_, t)| t.as_slice()).unwrap_or_default();
        write_stdout(format_args!("{}", String::from_utf8_lossy(top)));
        return exit::OK;
    };
    let mut written = Vec::new();
    for (name, text) in &all {
        let path = dir.join(name);
        if let Err(e) = write_page(dir, &path, text) {
            print_error(
                &format!(
                    "--dir {}: cannot write {}: {e}",
                    dir.display(),
                    path.display()
                ),
                Some("give --dir a directory you can write to (it is created if missing)"),
            );
            return exit::USAGE;
        }
        written.push(path);
    }
    match global.output {
        OutputFormat::Json => print_json(&serde_json::json!({ "man_pages": written })),
        OutputFormat::Text => {
            for p in &written {
                outln!("{}", p.display());
            }
        }
    }
    exit::OK
}

fn write_page(dir: &Path, path: &Path, text: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(text)?;
    f.flush()
}
