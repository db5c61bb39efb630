//! What the Debian package ships besides the binary, checked against the real binary and
//! the files in contrib/: the completion scripts and man pages it generates, and the
//! systemd unit (a cheap guard against the unit rotting away from what the daemon does).

use crate::common::*;
use clap::CommandFactory;
use gosyncd::cli::Cli;

/// The names of the visible top-level commands, from the clap definitions: a new command
/// is covered without editing this file.
fn command_names() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

/// Roff with its escapes for `-` and `'` and its font changes undone, as a reader of the
/// page sees it.
fn unescape_roff(page: &str) -> String {
    ["\\fB", "\\fI", "\\fR"]
        .iter()
        .fold(page.to_string(), |text, font| text.replace(font, ""))
        .replace("\\-", "-")
        .replace("\\*(Aq", "'")
}

#[tokio::test]
async fn bash_completion_offers_the_commands_and_their_options() {
    let run = gosyncd(["completions", "bash"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout.contains("complete -F _gosyncd"),
        "{}",
        run.stdout
    );
    // The words offered after `gosyncd `: the first non-empty `opts` list.
    let top_level: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("opts=\""))
        .find(|words| !words.starts_with('"'))
        .map(|words| words.trim_end_matches('"').split_whitespace().collect())
        .unwrap_or_default();
    for name in ["sync", "status", "backups", "cert", "check-config"] {
        assert!(top_level.contains(&name), "{name} not in {top_level:?}");
    }
    for name in command_names() {
        assert!(
            top_level.contains(&name.as_str()),
            "{name} not in {top_level:?}"
        );
    }
    assert!(run.stdout.contains("--config"), "{}", run.stdout);
    assert!(run.stdout.contains("--dry-run"), "{}", run.stdout);
}

#[tokio::test]
async fn every_supported_shell_gets_a_script_and_an_unknown_one_is_refused() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = gosyncd(["completions", shell]).await;
        assert_eq!(run.code, Some(0), "{shell}: {run:#?}");
        assert!(run.stdout.contains("gosyncd"), "{shell}: {}", run.stdout);
        assert!(run.stdout.contains("status"), "{shell}: {}", run.stdout);
    }
    let run = gosyncd(["completions", "tcsh"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
}

#[tokio::test]
async fn man_prints_a_roff_page_naming_every_command_and_the_config_option() {
    let run = gosyncd(["man"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let page = &run.stdout;
    assert!(
        page.lines().any(|l| l.starts_with(".TH gosyncd 1 ")),
        "{page}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH EXAMPLES"] {
        assert!(
            page.lines().any(|l| l == section),
            "no {section} in:\n{page}"
        );
    }
    let text = unescape_roff(page);
    let names = command_names();
    for expected in ["sync", "status", "backups", "cert", "completions", "man"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    for name in &names {
        assert!(
            text.contains(&format!("gosyncd-{name}(1)")),
            "{name} missing from:\n{page}"
        );
    }
    assert!(text.contains("--config <FILE>"), "{page}");
    assert!(text.contains("/etc/gosyncd/config.hcl"), "{page}");
    // The original tool's spelling is documented too.
    assert!(text.contains("-config FILE"), "{page}");
}

#[tokio::test]
async fn man_out_writes_one_page_per_command_into_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let run = gosyncd([
        std::ffi::OsString::from("man"),
        "--out".into(),
        out.clone().into(),
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let mut expected = vec!["gosyncd.1".to_string()];
    expected.extend(command_names().iter().map(|n| format!("gosyncd-{n}.1")));
    expected.extend([
        "gosyncd-cert-ca.1".into(),
        "gosyncd-backups-restore.1".into(),
    ]);
    for name in &expected {
        let path = out.join(name);
        let page = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; printed:\n{}", path.display(), run.stdout));
        assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
        assert!(run.stdout.contains(&path.display().to_string()), "{run:#?}");
    }
    let sync = unescape_roff(&std::fs::read_to_string(out.join("gosyncd-sync.1")).unwrap());
    assert!(sync.contains("gosyncd sync"), "{sync}");
    assert!(sync.contains("--dry-run"), "{sync}");
    assert!(sync.contains("--config <FILE>"), "{sync}");
}

#[test]
fn systemd_unit_waits_for_readiness_reloads_on_hup_and_stays_hardened() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/gosyncd.service");
    let unit = std::fs::read_to_string(path).unwrap();
    // Settings, not comments: `Key=value` lines of the unit.
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';') && l.contains('='))
        .collect();
    for expected in [
        "Type=notify",
        "ExecStart=/usr/bin/gosyncd -config /etc/gosyncd/config.hcl",
        "ExecReload=/usr/bin/gosyncd -config /etc/gosyncd/config.hcl check-config",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "StartLimitBurst=5",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "StateDirectory=gosyncd",
    ] {
        assert!(
            settings.contains(&expected),
            "{expected} missing from {path}"
        );
    }
    // Each path optional (`-`): a missing one must not stop the unit (226/NAMESPACE).
    let writable: Vec<&str> = settings
        .iter()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!writable.is_empty(), "no ReadWritePaths in {path}");
    assert!(
        writable.iter().all(|p| p.starts_with("-/")),
        "{writable:?} in {path}: a missing path would keep the unit from starting"
    );
    // The config is checked before the signal, so that a broken one fails the reload.
    let reloads: Vec<&&str> = settings
        .iter()
        .filter(|l| l.starts_with("ExecReload="))
        .collect();
    assert!(
        reloads.len() == 2 && reloads[0].contains("check-config"),
        "{reloads:?}"
    );
    // It runs as root: it sets owners, and its validate/on_change commands may need to.
    assert!(
        !settings
            .iter()
            .any(|l| l.starts_with("User=") || l.starts_with("DynamicUser=")),
        "{path} must run as root"
    );
    // The daemon copies mode bits 07777: setuid/setgid must stay possible.
    assert!(
        !settings.contains(&"RestrictSUIDSGID=yes"),
        "{path}: RestrictSUIDSGID would refuse setgid directories"
    );
}

#[test]
fn systemd_accepts_the_unit() {
    let analyze = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // The unit as installed, with this build's binary in place of /usr/bin/gosyncd (the
    // verifier checks that every command exists) and no man page to look up.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/gosyncd.service"
    ))
    .unwrap()
    .replace("/usr/bin/gosyncd", env!("CARGO_BIN_EXE_gosyncd"))
    .lines()
    .filter(|l| !l.starts_with("Documentation="))
    .collect::<Vec<_>>()
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gosyncd.service");
    std::fs::write(&path, unit).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        verify.status
    );
}
