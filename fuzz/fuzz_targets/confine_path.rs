//! The receiver's path validator on arbitrary strings: whatever a peer sends, a path it
//! accepts is normalised, inside a configured directory and not excluded there.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use gosyncd::tree::confine;
use gosyncd::config::Config;
use gosyncd::paths::{check_normalized, is_within};
use libfuzzer_sys::fuzz_target;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = r#"
bind_address = "127.0.0.1:1"
remotes = []
tls_ca_certificate = "ca.pem"
tls_certificate = "cert.pem"
tls_private_key = "key.pem"
directory "/etc/app" {
  exclude = ["/etc/app/private", "*.swp"]
}
directory "/srv/data" {
}
"#;
        Config::from_str(text, Path::new("/fuzz/config.hcl")).expect("fuzz config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(dir) = confine(config(), path) else {
        return;
    };
    assert!(check_normalized(path).is_ok(), "{path:?}");
    assert!(is_within(path, &dir.path), "{path:?} outside {}", dir.path);
    assert!(
        dir.path == "/etc/app" || dir.path == "/srv/data",
        "{path:?} in {}",
        dir.path
    );
    let below = path[dir.path.len()..].split('/').filter(|c| !c.is_empty());
    for component in below {
        // Editors' files are excluded everywhere by default, and gosyncd's own
        // temporary files always are.
        // (`.*.swp`: a dot, anything, then `.swp`.)
        assert!(
            !(component.len() >= 5 && component.starts_with('.') && component.ends_with(".swp")),
            "{path:?}: editor file"
        );
        assert!(
            !(component.starts_with(".gosyncd-") && component.ends_with(".tmp")),
            "{path:?}: temporary file"
        );
        if dir.path == "/etc/app" {
            assert!(!component.ends_with(".swp"), "{path:?} is excluded");
        }
    }
    assert!(!is_within(path, "/etc/app/private"), "{path:?} is excluded");
});
