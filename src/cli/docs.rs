//! Operator documentation generated from the clap definitions in [`crate::cli`]: shell
//! completion scripts (`gosyncd completions SHELL`) and man pages (`gosyncd man`).
//!
//! Nothing here describes an option or a command by hand: every command page and script
//! comes from `Cli::command()`, so they cannot drift from `--help`, and the configuration
//! file's page, gosyncd.hcl(5), is the README's description of the file (`config_page`).
//! The only text of this module's own is the part of the main page that clap has no
//! field for (the files, the original tool's single-dash flags), and the SYNOPSIS lines
//! are drawn here from the clap definitions, because clap_mangen's leave out option
//! values (`--config <FILE>`) and repetition (`[PATH]...`). Generation is pure (bytes in
//! memory); the two command functions at the end do the I/O.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, CommandFactory};
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

use super::args::{Cli, CompletionsArgs, ManArgs};
use crate::config::DEFAULT_CONFIG_PATH;

mod config_page;

/// The name the scripts complete and the pages document.
const BIN_NAME: &str = "gosyncd";

/// The man section of the command pages: user commands. The configuration file's page
/// is in section 5 ([`config_page`]).
const MAN_SECTION: &str = "1";

/// The manual every page belongs to.
const MANUAL: &str = "gosyncd manual";

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
    render(|page| {
        man.render_title(page)?;
        man.render_name_section(page)?;
        synopsis(&cmd).to_writer(page)?;
        man.render_description_section(page)?;
        man.render_options_section(page)?;
        man.render_subcommands_section(page)?;
        extra_sections(&cmd).to_writer(page)?;
        man.render_version_section(page)
    })
}

/// The page of one command (`gosyncd sync`): what clap_mangen's `Man::render` writes,
/// with [`synopsis`] for its own.
fn command_page(cmd: &clap::Command) -> Vec<u8> {
    let man = man_for(cmd.clone());
    render(|page| {
        man.render_title(page)?;
        man.render_name_section(page)?;
        synopsis(cmd).to_writer(page)?;
        man.render_description_section(page)?;
        if cmd.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(page)?;
        }
        if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
            man.render_subcommands_section(page)?;
        }
        if cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some() {
            man.render_extra_section(page)?;
        }
        if cmd
            .get_version()
            .or_else(|| cmd.get_long_version())
            .is_some()
        {
            man.render_version_section(page)?;
        }
        Ok(())
    })
}

fn render(write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Vec<u8> {
    let mut page = Vec::new();
    // Writing into a Vec cannot fail.
    write(&mut page).expect("write to memory");
    page
}

/// Every page as (file name, roff): gosyncd.1 first, then one per command and nested
/// command (`gosyncd-cert-ca.1`), each with its synopsis and options, global ones
/// included, then the configuration file's, gosyncd.hcl.5.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    fn subcommand_pages(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            out.push((man_for(sub.clone()).get_filename(), command_page(sub)));
            subcommand_pages(sub, out);
        }
    }
    let mut pages = vec![(format!("{BIN_NAME}.{MAN_SECTION}"), main_page())];
    subcommand_pages(&documented_command(), &mut pages);
    pages.push((
        config_page::FILE_NAME.to_string(),
        config_page::page(&source(), MANUAL),
    ));
    pages
}

fn man_for(cmd: clap::Command) -> Man {
    // Subcommands have no version of their own: every page carries the package's.
    Man::new(cmd)
        .section(MAN_SECTION)
        .source(source())
        .manual(MANUAL)
}

/// The footer's source: the package and its version.
fn source() -> String {
    format!("{BIN_NAME} {}", env!("CARGO_PKG_VERSION"))
}

/// SYNOPSIS in the forms `--help` prints: every visible option with its value
/// (`[--config <FILE>]`, an optional one in brackets, the required ones last), then the positionals (`[PATH]...`,
/// `<HOST>...`) and the command (`[COMMAND]`). clap_mangen's own leaves out the values
/// and the repetition (`[--config]`, `[PATH]`).
fn synopsis(cmd: &clap::Command) -> Roff {
    fn value_name(arg: &clap::Arg) -> String {
        arg.get_value_names()
            .map(|names| names.join(" "))
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
    }
    fn repeats(arg: &clap::Arg) -> bool {
        matches!(arg.get_action(), ArgAction::Append | ArgAction::Count)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
    }
    let mut line = vec![bold(cmd.get_bin_name().unwrap_or(cmd.get_name()))];
    let options = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional());
    // As in clap's usage line: the optional ones, then the required ones.
    let (required, optional): (Vec<_>, Vec<_>) = options.partition(|a| a.is_required_set());
    for arg in optional.into_iter().chain(required) {
        let mut form = match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => vec![
                bold(format!("-{short}")),
                roman("|"),
                bold(format!("--{long}")),
            ],
            (Some(short), None) => vec![bold(format!("-{short}"))],
            (None, Some(long)) => vec![bold(format!("--{long}"))],
            (None, None) => continue,
        };
        if arg.get_num_args().is_some_and(|n| n.takes_values()) {
            form.push(roman(" "));
            form.push(italic(format!("<{}>", value_name(arg))));
        }
        line.push(roman(" "));
        if arg.is_required_set() {
            line.extend(form);
        } else {
            line.push(roman("["));
            line.extend(form);
            line.push(roman("]"));
        }
        if repeats(arg) {
            line.push(roman("..."));
        }
    }
    for arg in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        line.push(roman(" "));
        if arg.is_required_set() {
            line.push(italic(format!("<{}>", value_name(arg))));
        } else {
            line.extend([roman("["), italic(value_name(arg)), roman("]")]);
        }
        if repeats(arg) {
            line.push(roman("..."));
        }
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        let name = cmd.get_subcommand_value_name().unwrap_or("COMMAND");
        line.push(roman(" "));
        if cmd.is_subcommand_required_set() {
            line.push(italic(format!("<{name}>")));
        } else {
            line.extend([roman("["), italic(name), roman("]")]);
        }
    }
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    // No hyphenation: `[COM-` `MAND]` across two lines reads as another word.
    roff.control("nh", []);
    roff.text(line);
    roff.control("hy", []);
    roff
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
        "The configuration file read when -config is not given (HCL), described in \
         gosyncd.hcl(5). An annotated example ships as contrib/gosyncd.example.hcl, and in \
         the Debian package as /usr/share/doc/gosyncd/examples/config.hcl.",
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
            "gosyncd.hcl.5",
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

    /// The SYNOPSIS line of a page, with the fonts and escapes taken out.
    fn plain_synopsis(page: &str) -> String {
        let line = page
            .lines()
            .skip_while(|l| *l != ".SH SYNOPSIS")
            .skip(1)
            .find(|l| !l.starts_with('.'))
            .unwrap_or_else(|| panic!("no synopsis in {page}"));
        line.replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "")
            .replace("\\-", "-")
    }

    #[test]
    fn synopsis_shows_option_values_and_repeated_paths() {
        let pages = man_pages();
        let page = |name: &str| {
            let (_, page) = pages.iter().find(|(n, _)| n == name).unwrap();
            plain_synopsis(&text(page))
        };
        let sync = page("gosyncd-sync.1");
        assert!(sync.starts_with("gosyncd sync [--dry-run] "), "{sync}");
        assert!(sync.contains(" [--format <FORMAT>] "), "{sync}");
        assert!(sync.contains(" [--config <FILE>] [-d|--debug] "), "{sync}");
        assert!(sync.ends_with(" [PATH]..."), "{sync}");
        let restore = page("gosyncd-backups-restore.1");
        assert!(restore.ends_with(" <PATH> [VERSION]"), "{restore}");
        let main = page("gosyncd.1");
        assert!(
            main.starts_with("gosyncd [--config <FILE>] [-d|--debug] "),
            "{main}"
        );
        assert!(main.ends_with(" [COMMAND]"), "{main}");
        assert!(page("gosyncd-backups.1").ends_with(" <COMMAND>"));
    }

    #[test]
    fn synopsis_ends_as_the_usage_of_help_does() {
        fn each(cmd: &clap::Command, pages: &[(String, Vec<u8>)], checked: &mut usize) {
            let name = man_for(cmd.clone()).get_filename();
            let (_, page) = pages.iter().find(|(n, _)| *n == name).unwrap();
            let synopsis = plain_synopsis(&text(page));
            let usage = cmd.clone().render_usage().to_string();
            // `Usage: gosyncd sync [OPTIONS] [PATH]...`: the part after the options.
            let tail = usage.rsplit("[OPTIONS]").next().unwrap().trim();
            assert!(
                synopsis.ends_with(tail),
                "{name}: {synopsis:?} vs {usage:?}"
            );
            *checked += 1;
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                each(sub, pages, checked);
            }
        }
        let mut checked = 0;
        each(&documented_command(), &man_pages(), &mut checked);
        assert!(checked > 10, "{checked}");
    }

    #[test]
    fn the_configuration_page_is_in_section_5_and_the_main_page_points_at_it() {
        let pages = man_pages();
        let (_, config) = pages.iter().find(|(n, _)| n == "gosyncd.hcl.5").unwrap();
        assert!(
            text(config).contains(".TH GOSYNCD.HCL 5 "),
            "{}",
            text(config)
        );
        assert!(text(&main_page()).contains("gosyncd.hcl(5)"));
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
