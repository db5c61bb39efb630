//! Certificates with rcgen: a group CA and the node certificates it signs, or one
//! self-signed certificate in the original tool's style (CA:TRUE, used by every node).
//! `gosyncd cert` ([`crate::certgen`]) writes them as PEM files for an operator; the demo
//! and the tests make theirs here too.
//!
//! Generation is pure (parameters in, PEM text out). A node certificate is verified
//! against its CA, for every host it names, with the daemon's own rules, so that
//! `gosyncd cert` never writes one the group would refuse.
//!
//! Split along what a certificate is made from: `host` parses and prints the names a
//! certificate is valid for (`Host`, `san_names`); `authority` holds a group CA, new or
//! loaded from its files, that issues node certificates and verifies them (`Authority`,
//! `CaError`). This file holds the validity periods, `Pem`, `set_validity` and the
//! self-signed certificate, and re-exports every item of its children, so `certs::`
//! paths stay as they were.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

mod authority;
mod host;

pub use authority::{Authority, CaError};
pub(crate) use host::san_names;
pub use host::Host;

/// Validity of a new group CA: ten years. Every node holds the CA certificate, so
/// replacing it means touching every node; it should outlive many node certificates.
pub const CA_DAYS: u32 = 3650;
/// Validity of a new node or self-signed certificate: 825 days, the longest the
/// CA/Browser Forum allowed for TLS certificates and what Apple platforms still accept;
/// the README's openssl example uses it too. About two years between renewals, and a
/// stolen key stops working by itself.
pub const NODE_DAYS: u32 = 825;
/// Longest validity `--days` accepts: a hundred years.
pub const MAX_DAYS: u32 = 36_500;
/// How far back a new certificate's validity starts, so that a peer whose clock is a
/// little behind accepts it at once.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Seconds in a day.
pub(crate) const DAY_SECS: u64 = 86_400;

/// A certificate and its private key, PEM-encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// Makes `params` valid for `days` days from `now` (starting [`BACKDATE`] earlier).
pub fn set_validity(params: &mut CertificateParams, now: SystemTime, days: u32) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + Duration::from_secs(u64::from(days) * DAY_SECS);
}

/// One self-signed certificate valid for `names`, carrying CA:TRUE like
/// `openssl req -x509` makes: the original setup where all three `tls_*` keys name it.
pub fn self_signed(names: &[String]) -> Result<Pem, rcgen::Error> {
    self_signed_with(names, |_| {})
}

/// Like [`self_signed`], with `adjust` applied to the parameters before signing.
pub fn self_signed_with(
    names: &[String],
    adjust: impl FnOnce(&mut CertificateParams),
) -> Result<Pem, rcgen::Error> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "gosyncd group");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    adjust(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certgen::*;
    use crate::config::Config;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::path::Path;

    #[test]
    fn validity_runs_the_given_days_from_a_backdated_start() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let pem = self_signed_with(&["10.0.0.2".into()], |p| set_validity(p, now, 825)).unwrap();
        let der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let validity = parsed.validity();
        assert_eq!(validity.not_before.timestamp(), 1_800_000_000 - 3600);
        assert_eq!(validity.not_after.timestamp(), 1_800_000_000 + 825 * 86_400);
    }

    #[test]
    fn printed_paths_read_back_as_the_same_paths_in_the_config() {
        let odd = Path::new("/tmp/a \"b\" \\c ${d} %{e}/node.pem");
        let text = crate::testing::config_text(Path::new("/r"), "").replace(
            "tls_certificate = \"cert.pem\"",
            &format!("tls_certificate = {}", hcl_path(odd)),
        );
        let config = Config::from_str(&text, Path::new("/x/config.hcl")).unwrap();
        assert_eq!(config.tls_certificate, odd);
    }

    #[test]
    fn help_explains_each_cert_command_with_an_example() {
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let cert = cli.find_subcommand_mut("cert").expect("cert command");
        let help = cert.render_long_help().to_string();
        for word in ["ca", "node", "self-signed", "subjectAltName", "Exit codes"] {
            assert!(help.contains(word), "cert help lacks {word}:\n{help}");
        }
        for (name, example) in [
            ("ca", "gosyncd cert ca --out"),
            ("node", "gosyncd cert node --ca"),
            ("self-signed", "gosyncd cert self-signed --out"),
        ] {
            let sub = cert.find_subcommand_mut(name).expect(name);
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains(example),
                "{name} help lacks an example:\n{help}"
            );
            assert!(help.contains("--out <DIR>"), "{name}:\n{help}");
        }
    }
}
