//! Tests of [`Config::from_str`](super::Config::from_str) as a whole: the seed and
//! contrib examples, defaults, and refusals that name the file, the key and the line.

use super::*;

const SEED: &str = r#"
bind_address = ":8080"

# List all the nodes in the group, self IP address will be blacklisted
remotes = [
  "172.17.0.2:8080",
  "172.17.0.3:8080"
]

tls_ca_certificate = "/etc/gosyncd/gosyncd.crt"
tls_certificate = "/etc/gosyncd/gosyncd.crt"
tls_private_key = "/etc/gosyncd/gosyncd.key"

directory "/etc/haproxy" {
  exclude = [
"/etc/haproxy/errors"
  ]
}

directory "/foo/bar" {
}
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("/etc/gosyncd/config.hcl"))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn seed_example_parses() {
    let c = parse(SEED).unwrap();
    assert_eq!(
        c.bind_address,
        BindAddress {
            ip: None,
            port: 8080
        }
    );
    assert_eq!(c.remotes.len(), 2);
    assert_eq!(c.remotes[1].label, "172.17.0.3:8080");
    assert_eq!(c.tls_certificate, PathBuf::from("/etc/gosyncd/gosyncd.crt"));
    assert_eq!(c.root, PathBuf::from("/"));
    assert_eq!(c.directories.len(), 2);
    assert_eq!(c.directories[1].path, "/foo/bar");
    assert!(c.directories[0]
        .excludes
        .is_excluded("/etc/haproxy/errors/503.http"));
}

#[test]
fn invalid_configs_are_refused_with_file_key_and_line() {
    let cases: &[(&str, &str)] = &[
        (
            "bind_adress = \":8080\"\n",
            "/etc/gosyncd/config.hcl:1: unknown key \"bind_adress\"",
        ),
        (
            &SEED.replace("bind_address = \":8080\"", "bind_address = 8080"),
            "config.hcl:2: bind_address: expected a string, found a number",
        ),
        (
            &SEED.replace("\"172.17.0.3:8080\"", "\"172.17.0.3\""),
            "config.hcl:5: remotes: \"172.17.0.3\": missing port",
        ),
        (
            &SEED.replace("\"/foo/bar\"", "\"foo/bar\""),
            "directory \"foo/bar\": path \"foo/bar\" is not absolute",
        ),
        (
            &SEED.replace("\"/foo/bar\"", "\"/etc/haproxy/conf.d\""),
            "config.hcl:20: directory \"/etc/haproxy/conf.d\" overlaps directory \"/etc/haproxy\"",
        ),
        (
            &SEED.replace("\"/etc/haproxy/errors\"", "\"/etc/nginx/errors\""),
            "exclude \"/etc/nginx/errors\" is not inside its directory \"/etc/haproxy\"",
        ),
        (
            &SEED.replace("tls_private_key = \"/etc/gosyncd/gosyncd.key\"", ""),
            "tls_private_key: required key is missing",
        ),
        (
            &SEED.replace("exclude = [", "exclud = ["),
            "directory \"/etc/haproxy\": unknown key \"exclud\"",
        ),
        (
            "bind_address = \n",
            "config.hcl:1: invalid HCL: invalid expression",
        ),
        (
            // A block's name used as a key: refused, not read as a string and ignored.
            &format!("{SEED}\nbackup = \"/var/lib/gosyncd/backups\"\n"),
            "config.hcl:23: unknown key \"backup\"",
        ),
        (
            &format!("{SEED}\nremotes = []\n"),
            "config.hcl:23: invalid HCL: invalid attribute; expected unique attribute key",
        ),
    ];
    for (text, expected) in cases {
        let message = error(text);
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
}

#[test]
fn an_error_names_its_own_line_when_a_block_with_the_same_key_comes_first() {
    // Regression: the overlap on line 12 was blamed on the backup block's `directory`
    // key, on line 7: lines were found by searching the text for the key.
    let text = r#"bind_address = ":8080"
remotes = ["10.0.0.2:8080"]
tls_ca_certificate = "/etc/gosyncd/ca.pem"
tls_certificate = "/etc/gosyncd/node.pem"
tls_private_key = "/etc/gosyncd/node.key"
backup {
  directory = "/var/lib/gosyncd/backups"
}
directory "/etc/haproxy" {
}

directory "/etc/haproxy/conf.d" {
}
"#;
    assert_eq!(
        error(text),
        "/etc/gosyncd/config.hcl:12: directory \"/etc/haproxy/conf.d\" overlaps directory \"/etc/haproxy\""
    );
    // A key inside a block is named on its own line, not on the block's first.
    let excluded = text.replace(
        "directory \"/etc/haproxy/conf.d\" {\n}",
        "directory \"/etc/nginx\" {\n  # outside\n  exclude = [\"/etc/other\"]\n}",
    );
    assert!(
        error(&excluded).starts_with("/etc/gosyncd/config.hcl:14: directory \"/etc/nginx\""),
        "{}",
        error(&excluded)
    );
    let limits = text.replace(
        "backup {",
        "limits {\n  max_handshakes = 64\n  max_connections = \"many\"\n}\nbackup {",
    );
    assert!(
        error(&limits).starts_with("/etc/gosyncd/config.hcl:8: limits: max_connections"),
        "{}",
        error(&limits)
    );
}

#[test]
fn example_config_in_contrib_parses() {
    let text = include_str!("../../contrib/gosyncd.example.hcl");
    let c = parse(text).unwrap();
    assert_eq!(c.remotes.len(), 3);
    assert_eq!(c.directories[0].path, "/etc/haproxy");
    assert!(c.directories[0]
        .excludes
        .is_excluded("/etc/haproxy/.haproxy.cfg.swp"));
    assert!(c.directories[0]
        .excludes
        .is_excluded("/etc/haproxy/errors/503.http"));
    // The commented-out optional keys are valid, and the limits shown are the
    // defaults.
    let uncommented: String = text
        .lines()
        .map(|l| l.replacen("  # validate", "  validate", 1))
        .map(|l| l.replacen("  # on_change", "  on_change", 1))
        .map(|l| l.replacen("  # on_conflict", "  on_conflict", 1))
        .collect::<Vec<_>>()
        .join("\n");
    let uncommented: String = uncommented
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("allow_from")
                    || rest.starts_with("max_delete_share")
                    || rest.starts_with("backup")
                    || rest.starts_with("validate")
                    || rest.starts_with("on_change")
                    || rest.starts_with("root")
                    || rest.starts_with("role")
                    || rest.starts_with("limits")
                    || rest.starts_with("  ")
                    || rest == "}" =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = parse(&uncommented).unwrap();
    assert!(c.allow_from.is_some());
    let haproxy = &c.directories[0];
    assert_eq!(haproxy.backup.as_ref().unwrap().keep, 5);
    assert!(haproxy.hooks.validate.is_some());
    assert_eq!(haproxy.hooks.on_change.len(), 1);
    assert_eq!(haproxy.on_conflict, OnConflict::Newest);
    assert_eq!(c.directories[1].on_conflict, OnConflict::Refuse);
    assert_eq!(c.limits, crate::config::Limits::default());
    assert_eq!(
        c.role,
        Role::SendReceive,
        "the example shows the default role"
    );
}

#[test]
fn debounce_and_editor_excludes_have_defaults_and_can_be_set() {
    let c = parse(SEED).unwrap();
    assert_eq!(c.debounce, DEFAULT_DEBOUNCE);
    let ex = &c.directories[0].excludes;
    for name in [
        ".haproxy.cfg.swp",
        ".x.swx",
        "haproxy.cfg~",
        "4913",
        ".#haproxy.cfg",
        "#haproxy.cfg#",
        "haproxy.cfg.dpkg-new",
        "haproxy.cfg.dpkg-tmp",
        "haproxy.cfg.dpkg-old",
        "haproxy.cfg.dpkg-dist",
        "haproxy.cfg.dpkg-bak",
        "haproxy.cfg.ucf-new",
        "haproxy.cfg.ucf-old",
        "haproxy.cfg.ucf-dist",
        "haproxy.cfg.rpmnew",
        "haproxy.cfg.rpmsave",
        "haproxy.cfg.rpmorig",
    ] {
        assert!(ex.is_excluded(&format!("/etc/haproxy/{name}")), "{name}");
    }
    assert!(!ex.is_excluded("/etc/haproxy/haproxy.cfg"));
    assert!(!ex.is_excluded("/etc/haproxy/haproxy.cfg.dpkg-new.d/x"));
    let text = format!("debounce = \"1s\"\neditor_excludes = false\n{SEED}");
    let c = parse(&text).unwrap();
    assert_eq!(c.debounce, Duration::from_secs(1));
    assert!(!c.directories[0].excludes.is_excluded("/etc/haproxy/x~"));
    assert!(error(&format!("debounce = \"soon\"\n{SEED}")).contains("config.hcl:1: debounce"));
    assert!(error(&format!("editor_excludes = \"no\"\n{SEED}")).contains("expected true or false"));
}

#[test]
fn state_directory_and_reconcile_interval_have_defaults_and_bad_values_name_the_key() {
    let c = parse(SEED).unwrap();
    assert_eq!(c.state_directory, Path::new(DEFAULT_STATE_DIRECTORY));
    assert_eq!(c.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
    let text = format!("state_directory = \"/srv/gosyncd\"\nreconcile_interval = \"90s\"\n{SEED}");
    let c = parse(&text).unwrap();
    assert_eq!(c.state_directory, Path::new("/srv/gosyncd"));
    assert_eq!(c.reconcile_interval, Duration::from_secs(90));
    let relative = error(&format!("state_directory = \"var/lib\"\n{SEED}"));
    assert!(
        relative.contains("config.hcl:1: state_directory"),
        "{relative}"
    );
    assert!(relative.contains("not an absolute path"), "{relative}");
    let inside = error(&format!("state_directory = \"/etc/haproxy/state\"\n{SEED}"));
    assert!(
        inside.contains("state_directory") && inside.contains("inside the synchronised directory"),
        "{inside}"
    );
    for bad in ["\"0s\"", "\"2d\"", "\"often\""] {
        let message = error(&format!("reconcile_interval = {bad}\n{SEED}"));
        assert!(
            message.contains("config.hcl:1: reconcile_interval") && message.contains("1s and 24h"),
            "{message}"
        );
    }
}

#[test]
fn allow_from_takes_addresses_networks_and_host_names() {
    assert_eq!(parse(SEED).unwrap().allow_from, None);
    let text = format!(
        "allow_from = [\"10.0.0.7\", \"10.1.0.9/16\", \"2001:db8::/32\", \"lb-1.example\"]\n{SEED}"
    );
    let entries: Vec<String> = parse(&text)
        .unwrap()
        .allow_from
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        entries,
        [
            "10.0.0.7/32",
            "10.1.0.0/16",
            "2001:db8::/32",
            "lb-1.example"
        ]
    );
    for bad in ["10.0.0.0/33", "10.0.0.300", "-host", "a b", ""] {
        let message = error(&format!("\n\nallow_from = [\"{bad}\"]\n{SEED}"));
        assert!(
            message.contains("config.hcl:3: allow_from:") && message.contains(&format!("{bad:?}")),
            "{bad:?}: {message}"
        );
    }
}

#[test]
fn bad_actions_and_backups_are_refused_naming_the_key() {
    let with = |inner: &str, outer: &str| {
        SEED.replace(
            "directory \"/foo/bar\" {\n}",
            &format!("directory \"/foo/bar\" {{\n{inner}\n}}\n{outer}"),
        )
    };
    for (inner, outer, words) in [
        ("validate = \"  \"", "", "validate: the command is empty"),
        (
            "run_on = \"sometimes\"",
            "",
            "run_on: \"sometimes\" is not one of",
        ),
        ("on_change = [\"\"]", "", "on_change: a command is empty"),
        ("reload = \"x\"", "", "unknown key \"reload\""),
        ("backup {\n keep = 3\n}", "", "backup: no directory named"),
        (
            "",
            "backup {\n directory = \"var/b\"\n}",
            "is not an absolute path",
        ),
        (
            "",
            "backup {\n directory = \"/foo/bar/old\"\n}",
            "must not be kept inside",
        ),
    ] {
        let message = error(&with(inner, outer));
        assert!(message.contains(words), "{inner:?} {outer:?}: {message}");
        assert!(message.contains("config.hcl:"), "{message}");
    }
    let c = parse(&with("validate = \"true\"\nrun_on = \"local\"", "")).unwrap();
    let hooks = &c.directories[1].hooks;
    assert_eq!(hooks.validate.as_deref(), Some("true"));
    assert_eq!(hooks.run_on, crate::config::RunOn::Local);
}

#[test]
fn max_delete_share_is_a_fraction() {
    assert_eq!(
        parse(SEED).unwrap().max_delete_share,
        DEFAULT_MAX_DELETE_SHARE
    );
    let c = parse(&format!("max_delete_share = 0.9\n{SEED}")).unwrap();
    assert_eq!(c.max_delete_share, 0.9);
    for bad in ["1.5", "-0.1", "\"half\""] {
        let message = error(&format!("max_delete_share = {bad}\n{SEED}"));
        assert!(
            message.contains("config.hcl:1: max_delete_share: expected a number from 0 to 1"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn tls_paths_are_relative_to_the_config_file() {
    let text = SEED.replace("/etc/gosyncd/gosyncd.key", "node.key");
    let c = Config::from_str(&text, Path::new("/srv/node1/config.hcl")).unwrap();
    assert_eq!(c.tls_private_key, PathBuf::from("/srv/node1/node.key"));
    assert_eq!(
        c.local_path("/etc/haproxy/x"),
        PathBuf::from("/etc/haproxy/x")
    );
}

#[test]
fn what_a_peer_may_set_is_refused_by_default_and_can_be_allowed() {
    let c = parse(SEED).unwrap();
    assert!(!c.allow_setid && !c.allow_writable_directories);
    let text = format!("allow_setid = true\nallow_writable_directories = true\n{SEED}");
    let c = parse(&text).unwrap();
    assert!(c.allow_setid && c.allow_writable_directories);
    let wrong = error(&format!("allow_setid = \"yes\"\n{SEED}"));
    assert!(
        wrong.contains("config.hcl:1: allow_setid") && wrong.contains("expected true or false"),
        "{wrong}"
    );
}

#[test]
fn on_change_splay_is_off_by_default_read_for_every_directory_and_bounded() {
    let c = parse(SEED).unwrap();
    assert!(c.directories.iter().all(|d| d.hooks.splay.is_zero()));
    let c = parse(&format!("on_change_splay = \"5s\"\n{SEED}")).unwrap();
    assert!(c
        .directories
        .iter()
        .all(|d| d.hooks.splay == Duration::from_secs(5)));
    let long = error(&format!("on_change_splay = \"2h\"\n{SEED}"));
    assert!(long.contains("config.hcl:1: on_change_splay"), "{long}");
    assert!(long.contains("0s and 1h"), "{long}");
}

#[test]
fn role_is_send_receive_by_default_and_can_be_receive_only() {
    let c = parse(SEED).unwrap();
    assert_eq!(c.role, Role::SendReceive);
    assert!(c.role.sends());
    let c = parse(&format!("role = \"receive-only\"\n{SEED}")).unwrap();
    assert_eq!(c.role, Role::ReceiveOnly);
    assert!(!c.role.sends());
    let c = parse(&format!("role = \"send-receive\"\n{SEED}")).unwrap();
    assert_eq!(c.role, Role::SendReceive);
}

#[test]
fn a_role_other_than_the_two_is_refused_naming_the_key_its_line_and_the_allowed_values() {
    // Near misses too: the names are exact.
    for bad in [
        "bogus",
        "receive_only",
        "Receive-Only",
        "receive",
        "send",
        "",
    ] {
        let message = error(&format!("\n\nrole = \"{bad}\"\n{SEED}"));
        assert!(
            message.starts_with("/etc/gosyncd/config.hcl:3: role: ")
                && message.contains(&format!("{bad:?} is not one of"))
                && message.contains("\"send-receive\", \"receive-only\""),
            "{bad:?}: {message}"
        );
    }
    for (bad, found) in [
        ("true", "a boolean"),
        ("1", "a number"),
        ("[\"receive-only\"]", "a list"),
    ] {
        let message = error(&format!("role = {bad}\n{SEED}"));
        assert!(
            message.contains(&format!(
                "config.hcl:1: role: expected a string, found {found}"
            )),
            "{bad}: {message}"
        );
    }
    // Set twice: refused by the parser, on the second line.
    let twice = error(&format!(
        "role = \"receive-only\"\nrole = \"send-receive\"\n{SEED}"
    ));
    assert!(twice.contains("config.hcl:2:"), "{twice}");
}

#[test]
fn on_conflict_refuses_by_default_and_newest_needs_a_backup() {
    let with = |inner: &str, outer: &str| {
        SEED.replace(
            "directory \"/foo/bar\" {\n}",
            &format!("{outer}\ndirectory \"/foo/bar\" {{\n{inner}\n}}"),
        )
    };
    let c = parse(SEED).unwrap();
    assert!(c
        .directories
        .iter()
        .all(|d| d.on_conflict == OnConflict::Refuse));

    // With the global backup, or the directory's own.
    let global = "backup {\n directory = \"/var/lib/gosyncd/backups\"\n}";
    let c = parse(&with("on_conflict = \"newest\"", global)).unwrap();
    assert_eq!(c.directories[1].on_conflict, OnConflict::Newest);
    assert_eq!(
        c.directories[0].on_conflict,
        OnConflict::Refuse,
        "per directory"
    );
    let own = "on_conflict = \"newest\"\nbackup {\n directory = \"/var/b\"\n}";
    let c = parse(&with(own, "")).unwrap();
    assert_eq!(c.directories[1].on_conflict, OnConflict::Newest);
    let c = parse(&with("on_conflict = \"refuse\"", "")).unwrap();
    assert_eq!(c.directories[1].on_conflict, OnConflict::Refuse);

    // Without a backup in force: no backup at all, or the directory's turned off.
    let off = "on_conflict = \"newest\"\nbackup {\n keep = 0\n}";
    for text in [with("on_conflict = \"newest\"", ""), with(off, global)] {
        let message = error(&text);
        assert!(
            message.contains("config.hcl:")
                && message
                    .contains("directory \"/foo/bar\": on_conflict = \"newest\" needs a backup")
                && message.contains("losing version")
                && message.contains("configure backup {"),
            "{message}"
        );
    }
    // Pointed at the key's line.
    let text = with("\n\non_conflict = \"newest\"", "");
    let message = error(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("on_conflict"))
        .unwrap()
        + 1;
    assert!(
        message.starts_with(&format!("/etc/gosyncd/config.hcl:{line}: ")),
        "{message}"
    );

    // Any other value names the key, the directory and the values allowed.
    for bad in ["\"latest\"", "\"NEWEST\"", "true"] {
        let message = error(&with(&format!("on_conflict = {bad}"), global));
        assert!(
            message.contains("config.hcl:")
                && message.contains("directory \"/foo/bar\": on_conflict:"),
            "{bad}: {message}"
        );
        if bad != "true" {
            assert!(
                message.contains("\"refuse\"") && message.contains("\"newest\""),
                "{bad}: {message}"
            );
        } else {
            assert!(message.contains("expected a string"), "{message}");
        }
    }
}
