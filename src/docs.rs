//! Operator documentation generated from the clap definitions in [`crate::cli`]: shell
//! completion scripts (`gosyncd completions SHELL`) and man pages (`gosyncd man`).
//!
//! Nothing here describes an option or a command by hand: every page and script comes
//! from `Cli::command()`, so they cannot drift from `--help`. The only text of this
//! module's own is the part of the main page that clap has no field for (the files, the
//! original tool's single-dash flags). Generation is pure (bytes in memory); the two
//! command functions at the end do the I/O.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

use crate::cli::Cli;
use crate::config::DEFAULT_CONFIG_PATH;

/// The name the scripts complete and the pages document.
const BIN_NAME: &str = "gosyncd";

/// The man section of every page: user commands.
const MAN_SECTION: &str = "1";

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write gosyncd.1 and one page per command (gosyncd-sync.1, gosyncd-cert-ca.1, ...)
    /// into DIR, created if missing, instead of printing gosyncd.1
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// The command tree as the pages show it: built (so every subcommand knows its full name,
/// `gosyncd sync`, and its page name, `gosyncd-sync`), without clap's implicit `help`
/// subcommands, which have no page of their own.
fn documented_command() -> clap::Command {
    fn without_help_subcommand(cmd: clap::Command) -> clap::Command {
        cmd.disable_help_subcommand(true)
            .mut_subcommands(without_help_subcommand)
    }
    let mut cmd = without_help_subcommand(Cli::command().bin_name(BIN_NAME));
    cmd.build();
    cmd
}

/// The completion script for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN_NAME, &mut script);
    script
}

/// The main page, gosyncd.1: name, synopsis, description, global options, the list of
/// commands (each pointing at its own page), then the examples, exit status, files and
/// notes.
pub fn main_page() -> Vec<u8> {
    let cmd = documented_command();
    let man = man_for(cmd.clone());
    let mut page = Vec::new();
    // Writing into a Vec cannot fail.
    man.render_title(&mut page).expect("write to memory");
    man.render_name_section(&mut page).expect("write to memory");
    man.render_synopsis_section(&mut page)
        .expect("write to memory");
    man.render_description_section(&mut page)
        .expect("write to memory");
    man.render_options_section(&mut page)
        .expect("write to memory");
    man.render_subcommands_section(&mut page)
        .expect("write to memory");
    extra_sections(&cmd)
        .to_writer(&mut page)
        .expect("write to memory");
    man.render_version_section(&mut page)
        .expect("write to memory");
    page
}

/// Every page as (file name, roff): gosyncd.1 first, then one per command and nested
/// command (`gosyncd-cert-ca.1`), each with its synopsis and options, global ones included.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    fn subcommand_pages(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let man = man_for(sub.clone());
            let mut page = Vec::new();
            man.render(&mut page).expect("write to memory");
            out.push((man.get_filename(), page));
            subcommand_pages(sub, out);
        }
    }
    let mut pages = vec![(format!("{BIN_NAME}.{MAN_SECTION}"), main_page())];
    subcommand_pages(&documented_command(), &mut pages);
    pages
}

fn man_for(cmd: clap::Command) -> Man {
    // Subcommands have no version of their own: every page carries the package's.
    Man::new(cmd)
        .section(MAN_SECTION)
        .source(format!("{BIN_NAME} {}", env!("CARGO_PKG_VERSION")))
        .manual("gosyncd manual")
}

/// EXAMPLES and EXIT STATUS from the `after_help` text (its "Examples:" and "Exit codes:"
/// paragraphs), then FILES and NOTES. The examples are aligned columns, so they are set
/// without filling.
fn extra_sections(cmd: &clap::Command) -> Roff {
    let mut roff = Roff::new();
    let after_help = cmd
        .get_after_long_help()
        .or_else(|| cmd.get_after_help())
        .map(|text| text.to_string())
        .unwrap_or_default();
    for paragraph in after_help.split("\n\n").filter(|p| !p.trim().is_empty()) {
        let (heading, body) = match paragraph.split_once('\n') {
            Some(("Examples:", body)) => ("EXAMPLES", body),
            _ if paragraph.starts_with("Exit codes:") => (
                "EXIT STATUS",
                paragraph.trim_start_matches("Exit codes:").trim_start(),
            ),
            _ => ("NOTES", paragraph),
        };
        roff.control("SH", [heading]);
        roff.control("nf", []);
        for line in body.lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }

    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([roman(DEFAULT_CONFIG_PATH)]);
    roff.text([roman(
        "The configuration file read when -config is not given (HCL). An annotated example \
         ships as contrib/gosyncd.example.hcl, and in the Debian package as \
         /usr/share/doc/gosyncd/examples/config.hcl.",
    )]);

    roff.control("SH", ["NOTES"]);
    roff.text([roman(
        "The original Go tool's single-dash long flags keep working: -config FILE, -dry, \
         -debug, and every other long option written with one dash (-config=FILE too).",
    )]);
    roff.control("PP", []);
    roff.text([roman(
        "Each command has its own page, gosyncd-COMMAND(1), written by gosyncd man --out DIR.",
    )]);
    roff
}

/// `gosyncd completions SHELL`: prints the script on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    write_stdout(&completion_script(args.shell))
}

/// `gosyncd man [--out DIR]`: prints gosyncd.1 on stdout, or writes every page into DIR
/// and prints their paths.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.out else {
        return write_stdout(&main_page());
    };
    let written = write_pages(&dir, &man_pages())?;
    let list: String = written
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect();
    write_stdout(list.as_bytes())
}

fn write_pages(dir: &Path, pages: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    pages
        .iter()
        .map(|(name, page)| {
            let path = dir.join(name);
            std::fs::write(&path, page)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// Writes `bytes` to stdout. A reader that stops early (`gosyncd man | head`) is not an
/// error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn one_page_per_visible_command_and_nested_command() {
        let names: Vec<String> = man_pages().into_iter().map(|(name, _)| name).collect();
        for expected in [
            "gosyncd.1",
            "gosyncd-sync.1",
            "gosyncd-status.1",
            "gosyncd-cert.1",
            "gosyncd-cert-ca.1",
            "gosyncd-cert-self-signed.1",
            "gosyncd-backups-restore.1",
            "gosyncd-man.1",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    }

    #[test]
    fn main_page_splits_examples_and_exit_status_out_of_after_help() {
        let page = text(&main_page());
        let examples = page.find(".SH EXAMPLES").expect(&page);
        let exit = page.find(".SH \"EXIT STATUS\"").expect(&page);
        assert!(examples < exit, "{page}");
        assert!(page[examples..exit].contains("sync \\-dry"), "{page}");
        assert!(!page.contains("Examples:"), "{page}");
        assert!(!page.contains("Exit codes:"), "{page}");
    }

    #[test]
    fn subcommand_pages_carry_their_full_name_and_the_global_options() {
        let pages = man_pages();
        let (_, sync) = pages.iter().find(|(n, _)| n == "gosyncd-sync.1").unwrap();
        let sync = text(sync);
        assert!(sync.contains("gosyncd sync"), "{sync}");
        assert!(sync.contains("\\-\\-dry\\-run"), "{sync}");
        assert!(sync.contains("\\-\\-config"), "{sync}");
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_binary() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let script = text(&completion_script(*shell));
            assert!(script.contains(BIN_NAME), "{shell}: {script}");
        }
    }
}
