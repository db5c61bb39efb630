//! `gosyncd cert`: writes the certificates [`crate::certs`] makes as the PEM files an
//! operator needs, refusing to overwrite without `--force`, and prints the `tls_*`
//! lines to use.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};

use crate::certs::*;

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

pub(crate) const CERT_EXAMPLES: &str = "\
Examples:
  gosyncd cert ca --out pki
  gosyncd cert node --ca pki --out pki/node2 10.0.0.2 node2.example.com
  gosyncd cert self-signed --out /etc/gosyncd 10.0.0.2 10.0.0.3 10.0.0.4

Exit codes: 0 the files were written; 2 an invalid argument, an unusable CA directory, a
file that exists without --force, or a write that failed.";

/// The files of a CA, in the `--ca` directory of `cert node`.
pub(crate) const CA_CERT_FILE: &str = "ca.pem";
pub(crate) const CA_KEY_FILE: &str = "ca.key";
/// One name on every node, so that every node's config can say the same.
pub(crate) const NODE_CERT_FILE: &str = "node.pem";
pub(crate) const NODE_KEY_FILE: &str = "node.key";
/// The names the original tool's documentation uses.
pub(crate) const SHARED_CERT_FILE: &str = "gosyncd.crt";
pub(crate) const SHARED_KEY_FILE: &str = "gosyncd.key";
/// Private keys are for their owner's eyes only.
pub(crate) const KEY_MODE: u32 = 0o600;
pub(crate) const CERT_MODE: u32 = 0o644;

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

pub(crate) fn days_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS))
}

/// A file to write.
pub(crate) struct OutFile {
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

pub(crate) fn make_ca(args: CaArgs, now: SystemTime) -> anyhow::Result<()> {
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

pub(crate) fn make_node(args: NodeArgs, now: SystemTime) -> anyhow::Result<()> {
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
pub(crate) fn load_ca(dir: &Path) -> Result<(Authority, PathBuf), String> {
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

pub(crate) fn make_self_signed(args: SelfSignedArgs, now: SystemTime) -> anyhow::Result<()> {
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
pub(crate) fn write_files<const N: usize>(
    out: &OutArgs,
    files: [OutFile; N],
) -> anyhow::Result<PathBuf> {
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

pub(crate) fn print_config_lines(whose: &str, ca: &Path, cert: &Path, key: &Path) {
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
pub(crate) fn say(text: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// `path` made absolute (not resolving links), or an error naming `flag`.
pub(crate) fn absolute(path: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| anyhow!("{flag} {}: {e}", path.display()))
}

/// A path as an HCL string literal: quotes, backslashes and template openers escaped.
pub(crate) fn hcl_path(path: &Path) -> String {
    let escaped = path
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "$${")
        .replace("%{", "%%{");
    format!("\"{escaped}\"")
}

pub(crate) fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * DAY_SECS)
}

/// A date as an operator reads it: `2028-03-01`.
pub(crate) fn date(time: SystemTime) -> String {
    let full = humantime::format_rfc3339_seconds(time).to_string();
    full[..10].to_string()
}
