//! What `gosyncd check-config` looks at beyond the file itself: whether the setup it
//! describes can work on this host. This node's certificate as its peers will judge it
//! (signed by the configured CA, within its validity period, naming the addresses the
//! `remotes` give this node), each configured directory on disk, and each remote's name
//! in DNS.
//!
//! It reads files, resolves names and binds throwaway sockets; it never connects to a
//! peer. Each finding is an [`Issue`]: an error when the setup cannot work, a warning
//! when it may still work (a name that does not resolve now may resolve later).

use std::fmt;

use rustls::pki_types::UnixTime;
use rustls::{CertificateError, Error};

use crate::config::Config;
use crate::protocol;
use crate::tls::{self, TlsMaterial};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The setup cannot work as it is.
    Error,
    /// It may still work, or work later.
    Warning,
}

/// One thing found wrong, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{label}: {}", self.message)
    }
}

fn error(message: String) -> Issue {
    Issue {
        severity: Severity::Error,
        message,
    }
}

fn warning(message: String) -> Issue {
    Issue {
        severity: Severity::Warning,
        message,
    }
}

/// Everything found wrong with a configuration whose file parsed and whose TLS files
/// loaded, in the order: certificate, directories, remotes.
pub async fn check(config: &Config, tls: &TlsMaterial) -> Vec<Issue> {
    let mut issues = certificate(config, tls, UnixTime::now());
    issues.extend(own_names(config, tls).await);
    issues.extend(directories(config));
    issues.extend(remotes(config).await);
    issues
}

/// This node's certificate as a peer will judge it: its chain and its dates.
fn certificate(config: &Config, tls: &TlsMaterial, now: UnixTime) -> Vec<Issue> {
    let (cert, ca) = (
        config.tls_certificate.display(),
        config.tls_ca_certificate.display(),
    );
    let Err(err) = tls.verify_own(now) else {
        return Vec::new();
    };
    let issue = match &err {
        err if tls::is_ca_used_as_end_entity(err) => error(format!(
            "tls_certificate {cert} is a self-signed (CA) certificate that tls_ca_certificate \
             {ca} does not hold, so peers refuse it: in the shared self-signed setup all three \
             tls_* keys name the same file, copied to every node; otherwise use a node \
             certificate signed by the group's CA (`gosyncd cert node`)"
        )),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => error(format!(
            "tls_certificate {cert} is not signed by the CA in tls_ca_certificate {ca}, so \
             peers trusting that CA refuse it: sign it with that CA (`gosyncd cert node --ca \
             DIR`), or name in tls_ca_certificate the CA that signed it, on every node"
        )),
        Error::InvalidCertificate(CertificateError::ExpiredContext { not_after, .. }) => {
            error(format!(
                "tls_certificate {cert} expired on {}, so peers refuse it: make a new one with \
                 the same names (`gosyncd cert node` or `gosyncd cert self-signed`)",
                tls::date(*not_after)
            ))
        }
        Error::InvalidCertificate(CertificateError::NotValidYetContext { not_before, .. }) => {
            warning(format!(
                "tls_certificate {cert} is not valid before {}, so peers refuse it until then: \
                 is this machine's clock right?",
                tls::date(*not_before)
            ))
        }
        other => error(format!(
            "tls_certificate {cert}: peers will refuse it ({other}): make a new one with \
             `gosyncd cert`"
        )),
    };
    vec![issue]
}

/// The names by which peers dial this node, that its certificate must name: the
/// address in `bind_address`, when it names one, and each remote that resolves to the
/// address this node listens on (a node lists itself among its remotes).
async fn own_names(config: &Config, tls: &TlsMaterial) -> Vec<Issue> {
    let cert = config.tls_certificate.display();
    let mut names: Vec<(String, String)> = Vec::new();
    if let Some(ip) = config.bind_address.source_ip() {
        names.push((ip.to_string(), "bind_address".to_string()));
    }
    for remote in &config.remotes {
        if crate::sync::resolves_to_self(remote, &config.bind_address).await
            && !names.iter().any(|(name, _)| *name == remote.host)
        {
            names.push((
                remote.host.clone(),
                format!("remotes entry {:?}", remote.label),
            ));
        }
    }
    names
        .into_iter()
        .filter(|(name, _)| !tls.names(name))
        .map(|(name, source)| {
            error(format!(
                "tls_certificate {cert} is not valid for {name} ({source}, this node), so \
                 peers dialling {name} refuse it: make one that names it among its \
                 subjectAltNames (`gosyncd cert node --ca DIR --out DIR {name} ...`)"
            ))
        })
        .collect()
}

/// Each configured directory must be a directory on this host. The configured path
/// itself may be a link to one (the administrator's, as the daemon takes it); links
/// below it are never followed.
fn directories(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    for dir in &config.directories {
        let local = config.local_path(&dir.path);
        let shown = local.display();
        let problem = match std::fs::metadata(&local) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => format!("{shown} is not a directory"),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&local).is_ok() =>
            {
                format!("{shown} is a symbolic link to nothing: point it at the directory, or name the directory itself")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{shown} does not exist: create it (mkdir -p {shown}), or remove the block")
            }
            Err(e) => format!("cannot read {shown}: {e}"),
        };
        issues.push(error(format!("directory {:?}: {problem}", dir.path)));
    }
    issues
}

/// Each remote's name must resolve; one that does not now may later, so a warning.
async fn remotes(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    for remote in &config.remotes {
        let lookup = tokio::net::lookup_host((remote.host.as_str(), remote.port));
        let why = match tokio::time::timeout(protocol::CONNECT_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => match addrs.count() {
                0 => "it has no address".to_string(),
                _ => continue,
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", protocol::CONNECT_TIMEOUT.as_secs()),
        };
        issues.push(warning(format!(
            "remotes entry {:?} does not resolve now ({why}): pushes to it fail until it \
             does; check the name, or write the node's address",
            remote.label
        )));
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_directory_may_be_a_link_to_one_but_not_to_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        let etc = tmp.path().join("etc");
        std::fs::create_dir_all(tmp.path().join("real")).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        // Missing.
        let found = directories(&config);
        assert!(
            found.len() == 1 && found[0].message.contains("does not exist"),
            "{found:?}"
        );
        // A link to a directory: what the daemon serves, watches and writes through.
        std::os::unix::fs::symlink(tmp.path().join("real"), etc.join("app")).unwrap();
        assert_eq!(directories(&config), []);
        // A link to nothing.
        std::fs::remove_dir(tmp.path().join("real")).unwrap();
        let found = directories(&config);
        assert!(
            found.len() == 1
                && found[0].severity == Severity::Error
                && found[0].message.contains("symbolic link to nothing"),
            "{found:?}"
        );
    }
}
