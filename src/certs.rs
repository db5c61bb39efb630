//! Certificates with rcgen: a group CA and the node certificates it signs, or one
//! self-signed certificate in the original tool's style (CA:TRUE, used by every node);
//! and `gosyncd cert`, which writes them as PEM files for an operator. The demo and the
//! tests make theirs here too.
//!
//! Generation is pure (parameters in, PEM text out); only [`command`] touches files. It
//! never writes a certificate the group would refuse: a node certificate is verified
//! against its CA, for every host it names, with the daemon's own rules before it is
//! written.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

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
const DAY_SECS: u64 = 86_400;

/// A certificate and its private key, PEM-encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

// ---------------------------------------------------------------------------------------
// Hosts.

/// A name a certificate is made valid for: an IP address (an IP subjectAltName) or a
/// DNS name (a DNS subjectAltName), as a peer dials it from its `remotes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl FromStr for Host {
    type Err = String;

    /// Accepts `10.0.0.2`, `fd00::2`, `[fd00::2]` and host names; refuses `host:port`,
    /// wildcards and anything else a TLS client could not match, saying why.
    fn from_str(text: &str) -> Result<Host, String> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if text.is_empty() {
            return Err("empty host".to_string());
        }
        if let Some((host, port)) = text.rsplit_once(':') {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                return Err(format!(
                    "looks like host:port; give the host alone ({host}): the port plays no part in a certificate"
                ));
            }
        }
        if text.contains('*') {
            return Err("wildcards are not supported: list every host".to_string());
        }
        if !text.is_ascii() {
            return Err(
                "not a valid DNS name (give an internationalised name in its xn-- form)"
                    .to_string(),
            );
        }
        match DnsName::try_from(text) {
            Ok(_) => Ok(Host::Dns(text.to_ascii_lowercase())),
            Err(_) => Err("neither an IP address nor a valid DNS name".to_string()),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

impl Host {
    /// The name a TLS client checks the certificate against.
    fn server_name(&self) -> ServerName<'static> {
        match self {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Dns(name) => {
                ServerName::DnsName(DnsName::try_from(name.clone()).expect("validated when parsed"))
            }
        }
    }
}

/// The hosts as the SAN strings rcgen expects (it makes an IP SAN of what parses as an
/// address, a DNS SAN of the rest), each once, in order.
fn san_names(hosts: &[Host]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for host in hosts.iter().map(Host::to_string) {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

// ---------------------------------------------------------------------------------------
// Generation.

/// Makes `params` valid for `days` days from `now` (starting [`BACKDATE`] earlier).
pub fn set_validity(params: &mut CertificateParams, now: SystemTime, days: u32) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + Duration::from_secs(u64::from(days) * DAY_SECS);
}

/// Why an existing CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("not a valid PEM certificate ({0})")]
    BadCertificate(String),
    #[error(
        "not a usable private key ({0}); a PKCS#8 \"PRIVATE KEY\" is needed (`openssl pkcs8 -topk8 -nocrypt` converts others)"
    )]
    BadKey(rcgen::Error),
    #[error("the private key belongs to none of the certificates")]
    KeyMismatch,
    #[error("not a CA certificate (it lacks basicConstraints CA:TRUE)")]
    NotCa,
    #[error("its subject name cannot be reproduced ({0})")]
    Name(String),
}

/// A certificate authority that signs node certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    /// The CA certificate(s), PEM-encoded: what `tls_ca_certificate` points at.
    pub cert_pem: String,
}

impl Authority {
    /// A new CA named `name`, valid from 1975 to 4096 (rcgen's defaults).
    pub fn new(name: &str) -> Result<Authority, rcgen::Error> {
        Authority::new_with(name, |_| {})
    }

    /// Like [`Authority::new`], with `adjust` applied to the CA's parameters before it
    /// signs itself (a validity period, say).
    pub fn new_with(
        name: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<Authority, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // It signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        adjust(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA: its certificate(s) and private key as PEM text. The certificate
    /// used is the one the key belongs to, so a file holding an old and a new CA during
    /// a change of CA works.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, CaError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::BadCertificate(e.to_string()))?;
        if certs.is_empty() {
            return Err(CaError::NoCertificate);
        }
        let key = KeyPair::from_pem(key_pem).map_err(CaError::BadKey)?;
        let mut found = None;
        for der in certs {
            let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| CaError::BadCertificate(e.to_string()))?;
            if parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
                let is_ca = matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
                let name = distinguished_name(parsed.subject());
                found = Some((der.clone(), is_ca, name));
                break;
            }
        }
        let (der, is_ca, name) = found.ok_or(CaError::KeyMismatch)?;
        if !is_ca {
            return Err(CaError::NotCa);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name?;
        Ok(Authority {
            issuer: Issuer::new(params, key),
            der,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA's private key, PEM-encoded (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate's subject (`CN=gosyncd group CA`) and the end of its validity.
    pub fn describe(&self) -> (String, SystemTime) {
        match x509_parser::parse_x509_certificate(self.der.as_ref()) {
            Ok((_, parsed)) => {
                let secs = parsed.validity().not_after.timestamp().max(0) as u64;
                (
                    parsed.subject().to_string(),
                    UNIX_EPOCH + Duration::from_secs(secs),
                )
            }
            Err(_) => ("an unparsable certificate".to_string(), UNIX_EPOCH),
        }
    }

    /// A node certificate valid for `names` (host names or IP addresses), usable as
    /// both server and client.
    pub fn issue(&self, names: &[String]) -> Result<Pem, rcgen::Error> {
        self.issue_with(names, |_| {})
    }

    /// Like [`Authority::issue`], with `adjust` applied to the certificate's parameters
    /// before signing (a validity period, say).
    pub fn issue_with(
        &self,
        names: &[String],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<Pem, rcgen::Error> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("gosyncd node", String::as_str),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        adjust(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Checks `cert_pem` as the daemon will: signed by this CA, valid at `now`, usable by
    /// a client, and by a server dialled as each of `hosts`.
    pub fn verify(&self, cert_pem: &str, hosts: &[Host], now: SystemTime) -> anyhow::Result<()> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
        let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH)?);
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone())?;
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        client
            .verify_client_cert(&cert, &[], now)
            .map_err(|e| anyhow!("refused as a client certificate: {e}"))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider).build()?;
        for host in hosts {
            server
                .verify_server_cert(&cert, &[], &host.server_name(), &[], now)
                .map_err(|e| anyhow!("refused as the server certificate of {host}: {e}"))?;
        }
        Ok(())
    }
}

/// An rcgen name that encodes to the same bytes as `name`, as a certificate's issuer
/// must for its CA to be found.
fn distinguished_name(
    name: &x509_parser::x509::X509Name<'_>,
) -> Result<DistinguishedName, CaError> {
    use x509_parser::der_parser::asn1_rs::Tag;

    let mut out = DistinguishedName::new();
    for rdn in name.iter() {
        let attrs: Vec<_> = rdn.iter().collect();
        let [attr] = attrs[..] else {
            return Err(CaError::Name("a multi-valued RDN".to_string()));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| CaError::Name("an attribute type out of range".to_string()))?
            .collect();
        let kind = DnType::from_oid(&oid);
        if out.get(&kind).is_some() {
            return Err(CaError::Name(format!(
                "attribute {} twice",
                attr.attr_type()
            )));
        }
        let data = attr.attr_value().data.to_vec();
        let text = || {
            String::from_utf8(data.clone())
                .map_err(|_| CaError::Name(format!("attribute {} is not text", attr.attr_type())))
        };
        let bad = |e: rcgen::Error| CaError::Name(e.to_string());
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(data.clone()).map_err(bad)?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.clone()).map_err(bad)?,
            ),
            other => return Err(CaError::Name(format!("a value of type {other}"))),
        };
        out.push(kind, value);
    }
    Ok(out)
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

// ---------------------------------------------------------------------------------------
// `gosyncd cert`: the files an operator needs.

/// `gosyncd cert --help`.
pub const CERT_LONG_ABOUT: &str = "\
Make the certificates of a group, with the right subjectAltNames, without openssl.

Two setups work (see \"Certificates\" in the README):
  - a group CA (`cert ca`) that signs one certificate per node (`cert node`): every node
    gets ca.pem and its own node.pem and node.key; ca.key stays on the machine that signs;
  - one self-signed certificate shared by every node (`cert self-signed`), the original
    tool's setup: all three tls_* keys name it.

A certificate is valid for each HOST given: IP addresses become IP subjectAltNames, names
DNS ones. A peer checks the host it dials (from `remotes`) against them, so give every
form the remotes use. Keys are ECDSA P-256, written mode 0600; existing files are never
replaced without --force. Each command prints the files it wrote and the config lines
that use them.";

const CERT_EXAMPLES: &str = "\
Examples:
  gosyncd cert ca --out pki
  gosyncd cert node --ca pki --out pki/node2 10.0.0.2 node2.example.com
  gosyncd cert self-signed --out /etc/gosyncd 10.0.0.2 10.0.0.3 10.0.0.4

Exit codes: 0 the files were written; 2 an invalid argument, an unusable CA directory, a
file that exists without --force, or a write that failed.";

/// The files of a CA, in the `--ca` directory of `cert node`.
const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
/// One name on every node, so that every node's config can say the same.
const NODE_CERT_FILE: &str = "node.pem";
const NODE_KEY_FILE: &str = "node.key";
/// The names the original tool's documentation uses.
const SHARED_CERT_FILE: &str = "gosyncd.crt";
const SHARED_KEY_FILE: &str = "gosyncd.key";
/// Private keys are for their owner's eyes only.
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// `gosyncd cert`.
#[derive(Args, Debug)]
#[command(
    after_help = CERT_EXAMPLES,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct CertArgs {
    #[command(subcommand)]
    pub kind: CertKind,
}

#[derive(Subcommand, Debug)]
pub enum CertKind {
    /// Make a group CA: ca.pem (every node's tls_ca_certificate) and ca.key (signs node
    /// certificates; keep it off the nodes)
    #[command(after_help = "\
Replacing a CA (--force) makes every certificate it signed untrusted once the nodes have
the new ca.pem.

Example:
  gosyncd cert ca --out pki --name \"example.com gosyncd CA\"

Then one certificate per node:
  gosyncd cert node --ca pki --out pki/node2 10.0.0.2")]
    Ca(CaArgs),
    /// Make one node's certificate, signed by the group CA: node.pem and node.key, valid
    /// for every HOST, as server and as client
    #[command(after_help = "\
The files are always named node.pem and node.key, so that every node's config can name
the same files: give each node its own --out directory.

Example:
  gosyncd cert node --ca pki --out pki/node2 10.0.0.2 node2.example.com
  scp pki/ca.pem pki/node2/node.pem pki/node2/node.key root@10.0.0.2:/etc/gosyncd/")]
    Node(NodeArgs),
    /// Make one self-signed certificate for the whole group (the original setup):
    /// gosyncd.crt and gosyncd.key, valid for every HOST, named by all three tls_* keys
    #[command(after_help = "\
Give every node's address: each peer checks the one it dials.

Example:
  gosyncd cert self-signed --out /etc/gosyncd 10.0.0.2 10.0.0.3 10.0.0.4
  then copy gosyncd.crt and gosyncd.key to the same place on every node")]
    SelfSigned(SelfSignedArgs),
}

/// Where the files go.
#[derive(Args, Debug)]
pub struct OutArgs {
    /// Directory to write the files into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Replace files that already exist (by default nothing is overwritten)
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct CaArgs {
    #[command(flatten)]
    pub out: OutArgs,

    /// The CA's name (its certificate's common name)
    #[arg(long, default_value = "gosyncd group CA", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub name: String,

    /// Days the CA is valid: by default ten years, so that it outlives many node
    /// certificates (replacing it means touching every node)
    #[arg(long, value_name = "N", default_value_t = CA_DAYS, value_parser = days_parser())]
    pub days: u32,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Directory holding the CA's ca.pem and ca.key (made by `gosyncd cert ca`)
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,

    #[command(flatten)]
    pub out: OutArgs,

    /// Days the certificate is valid: about two years between renewals by default
    #[arg(long, value_name = "N", default_value_t = NODE_DAYS, value_parser = days_parser())]
    pub days: u32,

    /// The node's IP addresses and host names, as the other nodes' remotes name it
    #[arg(value_name = "HOST", required = true)]
    pub hosts: Vec<Host>,
}

#[derive(Args, Debug)]
pub struct SelfSignedArgs {
    #[command(flatten)]
    pub out: OutArgs,

    /// Days the certificate is valid: about two years between renewals by default
    #[arg(long, value_name = "N", default_value_t = NODE_DAYS, value_parser = days_parser())]
    pub days: u32,

    /// Every node's IP addresses and host names, as the remotes name them
    #[arg(value_name = "HOST", required = true)]
    pub hosts: Vec<Host>,
}

fn days_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS))
}

/// A file to write.
struct OutFile {
    name: &'static str,
    contents: String,
    mode: u32,
    /// What it is, for the operator.
    what: String,
}

/// Runs `gosyncd cert ...`: writes the files, prints them and the config lines.
pub fn command(args: CertArgs) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    match args.kind {
        CertKind::Ca(args) => make_ca(args, now),
        CertKind::Node(args) => make_node(args, now),
        CertKind::SelfSigned(args) => make_self_signed(args, now),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn make_ca(args: CaArgs, now: SystemTime) -> anyhow::Result<()> {
    let ca = Authority::new_with(&args.name, |p| set_validity(p, now, args.days))
        .context("cannot make the CA")?;
    let until = date(now + days(args.days));
    let dir = write_files(
        &args.out,
        [
            OutFile {
                name: CA_CERT_FILE,
                contents: ca.cert_pem.clone(),
                mode: CERT_MODE,
                what: format!("CA certificate \"{}\", valid until {until}", args.name),
            },
            OutFile {
                name: CA_KEY_FILE,
                contents: ca.key_pem(),
                mode: KEY_MODE,
                what: "its private key: keep it off the nodes, it signs certificates the \
                       whole group trusts"
                    .to_string(),
            },
        ],
    )?;
    say(format_args!(
        "\nconfig line for every node:\ntls_ca_certificate = {}",
        hcl_path(&dir.join(CA_CERT_FILE))
    ));
    say(format_args!(
        "\nnext, one certificate per node:\n  gosyncd cert node --ca {} --out {} HOST...",
        dir.display(),
        dir.join("NODE").display()
    ));
    Ok(())
}

fn make_node(args: NodeArgs, now: SystemTime) -> anyhow::Result<()> {
    let ca_dir = absolute(&args.ca, "--ca")?;
    let ca_error = |e: String| anyhow!("--ca {}: {e}", args.ca.display());
    let (ca, cert_path) = load_ca(&ca_dir).map_err(ca_error)?;
    let (subject, ca_until) = ca.describe();
    if ca_until < now {
        return Err(ca_error(format!(
            "{}: the CA expired on {}: make a new one (`gosyncd cert ca`)",
            cert_path.display(),
            date(ca_until)
        )));
    }
    let names = san_names(&args.hosts);
    let pem = ca
        .issue_with(&names, |p| set_validity(p, now, args.days))
        .context("cannot make the certificate")?;
    ca.verify(&pem.cert, &args.hosts, now).map_err(|e| {
        ca_error(format!(
            "{}: this CA cannot sign a usable certificate: {e:#}",
            cert_path.display()
        ))
    })?;
    let until = now + days(args.days);
    let dir = write_files(
        &args.out,
        [
            OutFile {
                name: NODE_CERT_FILE,
                contents: pem.cert,
                mode: CERT_MODE,
                what: format!(
                    "certificate for {}, signed by {subject}, valid until {}",
                    names.join(", "),
                    date(until)
                ),
            },
            OutFile {
                name: NODE_KEY_FILE,
                contents: pem.key,
                mode: KEY_MODE,
                what: "its private key".to_string(),
            },
        ],
    )?;
    if ca_until < until {
        tracing::warn!(
            "--ca {}: the CA expires on {}, before this certificate: peers refuse it from then",
            args.ca.display(),
            date(ca_until)
        );
    }
    print_config_lines(
        "this node",
        &cert_path,
        &dir.join(NODE_CERT_FILE),
        &dir.join(NODE_KEY_FILE),
    );
    Ok(())
}

/// The CA in the `--ca` directory `dir`, and the path of its certificate; errors say
/// which file is wrong and how.
fn load_ca(dir: &Path) -> Result<(Authority, PathBuf), String> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "cannot read it: {e} (make a CA with `gosyncd cert ca --out DIR`)"
            ))
        }
        Err(e) => return Err(format!("cannot read it: {e}")),
        Ok(meta) if !meta.is_dir() => {
            return Err(format!(
                "not a directory (give the directory holding {CA_CERT_FILE} and {CA_KEY_FILE}, \
                 made by `gosyncd cert ca`)"
            ))
        }
        Ok(_) => {}
    }
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
    let ca = Authority::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
        CaError::BadKey(_) => format!("{}: {e}", key_path.display()),
        CaError::KeyMismatch => format!(
            "{} does not belong to {}",
            key_path.display(),
            cert_path.display()
        ),
        _ => format!("{}: {e}", cert_path.display()),
    })?;
    Ok((ca, cert_path))
}

fn make_self_signed(args: SelfSignedArgs, now: SystemTime) -> anyhow::Result<()> {
    let names = san_names(&args.hosts);
    let pem = self_signed_with(&names, |p| set_validity(p, now, args.days))
        .context("cannot make the certificate")?;
    let until = date(now + days(args.days));
    let dir = write_files(
        &args.out,
        [
            OutFile {
                name: SHARED_CERT_FILE,
                contents: pem.cert,
                mode: CERT_MODE,
                what: format!(
                    "self-signed certificate for {}, valid until {until}",
                    names.join(", ")
                ),
            },
            OutFile {
                name: SHARED_KEY_FILE,
                contents: pem.key,
                mode: KEY_MODE,
                what: "its private key, shared by every node".to_string(),
            },
        ],
    )?;
    let (cert, key) = (dir.join(SHARED_CERT_FILE), dir.join(SHARED_KEY_FILE));
    print_config_lines("every node", &cert, &cert, &key);
    Ok(())
}

/// Writes `files` into `--out` (created if missing), each through a temporary file and
/// a rename, so that no file is ever half-written. Unless `--force`, refuses before
/// writing anything if any of them exists. Prints each file written; returns the
/// absolute directory.
fn write_files<const N: usize>(out: &OutArgs, files: [OutFile; N]) -> anyhow::Result<PathBuf> {
    let dir = absolute(&out.out, "--out")?;
    let out_error = |e: String| anyhow!("--out {}: {e}", out.out.display());
    std::fs::create_dir_all(&dir)
        .map_err(|e| out_error(format!("cannot create the directory: {e}")))?;
    if !out.force {
        for file in &files {
            let path = dir.join(file.name);
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(out_error(format!(
                    "{} already exists: not replacing it without --force",
                    path.display()
                )));
            }
        }
    }
    for file in &files {
        let path = dir.join(file.name);
        let fail =
            |e: &dyn fmt::Display| out_error(format!("cannot write {}: {e}", path.display()));
        // Created 0600, whatever the umask; a certificate is opened up once written.
        let mut tmp = tempfile::Builder::new()
            .prefix(".gosyncd-cert-")
            .tempfile_in(&dir)
            .map_err(|e| fail(&e))?;
        tmp.write_all(file.contents.as_bytes())
            .and_then(|()| {
                let mode = std::os::unix::fs::PermissionsExt::from_mode(file.mode);
                tmp.as_file().set_permissions(mode)
            })
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| fail(&e))?;
        let persisted = if out.force {
            tmp.persist(&path).map(drop)
        } else {
            tmp.persist_noclobber(&path).map(drop)
        };
        persisted.map_err(|e| fail(&e.error))?;
        say(format_args!("wrote {}: {}", path.display(), file.what));
    }
    Ok(dir)
}

fn print_config_lines(whose: &str, ca: &Path, cert: &Path, key: &Path) {
    say(format_args!(
        "\nconfig lines for {whose} (adjust the paths if the files move):\n\
         tls_ca_certificate = {}\ntls_certificate = {}\ntls_private_key = {}",
        hcl_path(ca),
        hcl_path(cert),
        hcl_path(key)
    ));
}

/// Prints a line on stdout. The files are written by then: a closed stdout (`| head`)
/// is no reason to fail.
fn say(text: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// `path` made absolute (not resolving links), or an error naming `flag`.
fn absolute(path: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| anyhow!("{flag} {}: {e}", path.display()))
}

/// A path as an HCL string literal: quotes, backslashes and template openers escaped.
fn hcl_path(path: &Path) -> String {
    let escaped = path
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "$${")
        .replace("%{", "%%{");
    format!("\"{escaped}\"")
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * DAY_SECS)
}

/// A date as an operator reads it: `2028-03-01`.
fn date(time: SystemTime) -> String {
    let full = humantime::format_rfc3339_seconds(time).to_string();
    full[..10].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn host(text: &str) -> Result<Host, String> {
        text.parse()
    }

    #[test]
    fn hosts_are_addresses_or_dns_names_and_anything_else_is_refused_saying_why() {
        assert_eq!(host("10.0.0.2"), Ok(Host::Ip("10.0.0.2".parse().unwrap())));
        assert_eq!(host("fd00::2"), Ok(Host::Ip("fd00::2".parse().unwrap())));
        assert_eq!(host("[fd00::2]"), Ok(Host::Ip("fd00::2".parse().unwrap())));
        assert_eq!(
            host("Node2.Example.com"),
            Ok(Host::Dns("node2.example.com".into()))
        );
        assert_eq!(host("node2"), Ok(Host::Dns("node2".into())));
        for (bad, why) in [
            ("10.0.0.2:8080", "give the host alone (10.0.0.2)"),
            ("[fd00::2]:8080", "give the host alone (fd00::2)"),
            ("node2:8080", "give the host alone (node2)"),
            ("*.example.com", "wildcards"),
            ("nœud.example", "xn--"),
            ("10.0.0.256", "neither an IP address nor a valid DNS name"),
            ("bad host", "neither an IP address nor a valid DNS name"),
            (
                "https://node2",
                "neither an IP address nor a valid DNS name",
            ),
            ("", "empty host"),
        ] {
            let err = host(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn each_host_is_named_once_in_order() {
        let hosts: Vec<Host> = ["10.0.0.2", "node2", "[10.0.0.2]", "NODE2", "fd00::2"]
            .iter()
            .map(|h| h.parse().unwrap())
            .collect();
        assert_eq!(san_names(&hosts), ["10.0.0.2", "node2", "fd00::2"]);
    }

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

    /// A CA whose name mixes string types, as openssl writes them.
    fn openssl_like_ca() -> Authority {
        Authority::new_with("Example CA", |params| {
            let mut name = DistinguishedName::new();
            name.push(
                DnType::CountryName,
                DnValue::PrintableString("FR".try_into().unwrap()),
            );
            name.push(DnType::OrganizationName, "Exämple");
            name.push(DnType::CommonName, "Example CA");
            params.distinguished_name = name;
        })
        .unwrap()
    }

    #[test]
    fn a_ca_loaded_from_its_files_signs_certificates_the_original_verifies() {
        let now = SystemTime::now();
        for original in [
            Authority::new("gosyncd group CA").unwrap(),
            openssl_like_ca(),
        ] {
            let loaded = Authority::from_pem(&original.cert_pem, &original.key_pem()).unwrap();
            assert_eq!(loaded.describe(), original.describe());
            let hosts = [host("10.0.0.2").unwrap(), host("node2.example").unwrap()];
            let pem = loaded.issue(&san_names(&hosts)).unwrap();
            original.verify(&pem.cert, &hosts, now).unwrap();
        }
    }

    #[test]
    fn the_ca_whose_key_is_given_is_used_among_several() {
        let (old, new) = (
            Authority::new("old").unwrap(),
            Authority::new("new").unwrap(),
        );
        let both = format!("{}{}", old.cert_pem, new.cert_pem);
        let loaded = Authority::from_pem(&both, &new.key_pem()).unwrap();
        assert_eq!(loaded.describe().0, "CN=new");
    }

    #[test]
    fn loading_refuses_a_foreign_key_a_node_certificate_and_garbage() {
        let (ca, other) = (
            Authority::new("ca").unwrap(),
            Authority::new("other").unwrap(),
        );
        let node = ca.issue(&["10.0.0.2".into()]).unwrap();
        let load = |cert: &str, key: &str| Authority::from_pem(cert, key).err().unwrap();
        assert!(matches!(
            load(&ca.cert_pem, &other.key_pem()),
            CaError::KeyMismatch
        ));
        assert!(matches!(load(&node.cert, &node.key), CaError::NotCa));
        assert!(matches!(load("", &ca.key_pem()), CaError::NoCertificate));
        assert!(matches!(load(&ca.cert_pem, "no key"), CaError::BadKey(_)));
    }

    #[test]
    fn verification_refuses_another_cas_certificate_and_a_host_it_does_not_name() {
        let now = SystemTime::now();
        let (ca, other) = (
            Authority::new("ca").unwrap(),
            Authority::new("other").unwrap(),
        );
        let hosts = [host("10.0.0.2").unwrap()];
        let pem = other.issue(&san_names(&hosts)).unwrap();
        assert!(ca.verify(&pem.cert, &hosts, now).is_err());
        let pem = ca.issue(&san_names(&hosts)).unwrap();
        ca.verify(&pem.cert, &hosts, now).unwrap();
        let err = ca
            .verify(&pem.cert, &[host("10.0.0.3").unwrap()], now)
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.3"), "{err}");
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
