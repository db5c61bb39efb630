//! PEM files -> rustls server and client configurations for mutual TLS.
//!
//! Only the configured CA is trusted, never the system roots. Besides ordinary chains,
//! a certificate that is byte-identical to one in the CA file is accepted ("pinned"):
//! this is the original tool's setup, one self-signed certificate (which carries
//! CA:TRUE) named by all three `tls_*` keys, which webpki alone refuses as
//! `CaUsedAsEndEntity`. A pinned certificate still has its validity period checked and,
//! on the client side, its subjectAltName against the peer's host.

use std::error::Error as StdError;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::config::Config;

/// The certificates and key named by the config.
pub struct TlsMaterial {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsMaterial {
    /// Reads the three PEM files, naming the key and file on failure.
    pub fn load(config: &Config) -> anyhow::Result<TlsMaterial> {
        let certs =
            |key: &str, path: &std::path::Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| anyhow!("{key}: {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(anyhow!(
                        "{key}: {}: no PEM certificate found",
                        path.display()
                    ));
                }
                Ok(certs)
            };
        let ca = certs("tls_ca_certificate", &config.tls_ca_certificate)?;
        let chain = certs("tls_certificate", &config.tls_certificate)?;
        let key = PrivateKeyDer::from_pem_file(&config.tls_private_key).map_err(|e| {
            anyhow!(
                "tls_private_key: {}: no usable PEM private key ({e})",
                config.tls_private_key.display()
            )
        })?;
        let material = TlsMaterial { ca, chain, key };
        material.check_key_fits(config)?;
        if let Some(problem) = material.validity_problem(UnixTime::now()) {
            // Not fatal: a machine booted before its clock is set would otherwise stay
            // down; peers refuse the certificate meanwhile, and say why.
            tracing::warn!(
                "tls_certificate {}: {problem}: peers will refuse it",
                config.tls_certificate.display()
            );
        }
        Ok(material)
    }

    /// Checks that the private key is usable and is the key of the certificate, naming
    /// both files: rustls says only `KeyMismatch`, and only once a TLS configuration is
    /// built from them.
    fn check_key_fits(&self, config: &Config) -> anyhow::Result<()> {
        let (cert, key) = (
            config.tls_certificate.display(),
            config.tls_private_key.display(),
        );
        match rustls::sign::CertifiedKey::from_der(
            self.chain.clone(),
            self.key.clone_key(),
            &provider(),
        ) {
            Ok(_) => Ok(()),
            Err(Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(anyhow!(
                "tls_private_key {key} is not the key of tls_certificate {cert}: name the key \
                 file made together with that certificate (`gosyncd cert` writes them side by \
                 side: node.key with node.pem, gosyncd.key with gosyncd.crt), or make a new \
                 pair"
            )),
            Err(e) => Err(anyhow!(
                "tls_private_key {key}: cannot be used with tls_certificate {cert}: {e} \
                 (gosyncd takes ECDSA P-256/P-384, Ed25519 and RSA keys in PEM)"
            )),
        }
    }

    /// Judges this node's certificate as a peer will, at `now`: signed by the CA in
    /// tls_ca_certificate (or held there itself, pinned), within its validity period,
    /// and usable by a client.
    pub fn verify_own(&self, now: UnixTime) -> Result<(), Error> {
        let roots = self.roots().map_err(|e| Error::General(format!("{e:#}")))?;
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        let verifier = PinnedClientVerifier {
            inner,
            pinned: self.ca.clone(),
        };
        let (end_entity, intermediates) = self
            .chain
            .split_first()
            .ok_or(Error::NoCertificatesPresented)?;
        verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
    }

    /// Whether this node's certificate is valid for `host` (an IP address or a DNS name),
    /// as a peer dialling it by that name checks.
    pub fn names(&self, host: &str) -> bool {
        let (Some(cert), Ok(name)) = (self.chain.first(), ServerName::try_from(host)) else {
            return false;
        };
        webpki::EndEntityCert::try_from(cert)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// What is wrong with our own certificate's validity period at `now`, if anything.
    pub fn validity_problem(&self, now: UnixTime) -> Option<String> {
        match check_validity(self.chain.first()?, now) {
            Ok(()) => None,
            Err(Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after, ..
            })) => Some(format!("expired on {}", date(not_after))),
            Err(Error::InvalidCertificate(CertificateError::NotValidYetContext {
                not_before,
                ..
            })) => Some(format!(
                "not valid before {} (is this machine's clock right?)",
                date(not_before)
            )),
            Err(e) => Some(e.to_string()),
        }
    }

    fn roots(&self) -> anyhow::Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots
                .add(cert.clone())
                .context("tls_ca_certificate: a certificate cannot be used as a trust anchor")?;
        }
        Ok(Arc::new(roots))
    }

    /// The server side: requires a client certificate from the group.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = provider();
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .context("tls_ca_certificate: cannot build the client verifier")?;
        let verifier = PinnedClientVerifier {
            inner,
            pinned: self.ca.clone(),
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("tls_certificate/tls_private_key: the key does not fit the certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The client side: presents our certificate, trusts only the group's CA.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        self.client_config_checking_names(true)
    }

    /// A client for asking this node's own daemon for its identity through whatever
    /// address it listens on: the chain is verified, the name is not (the answer is only
    /// ever used to skip a remote, never to send it anything).
    pub fn identity_probe_config(&self) -> anyhow::Result<ClientConfig> {
        self.client_config_checking_names(false)
    }

    fn client_config_checking_names(&self, check_names: bool) -> anyhow::Result<ClientConfig> {
        let provider = provider();
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .context("tls_ca_certificate: cannot build the server verifier")?;
        let verifier = PinnedServerVerifier {
            inner,
            pinned: self.ca.clone(),
            check_names,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .context("tls_certificate/tls_private_key: the key does not fit the certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks the validity period of a pinned certificate, with the times in the error, as
/// webpki reports them for ordinary chains.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
    let (not_before, not_after) =
        validity(cert).ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if now.as_secs() < not_before.as_secs() {
        return Err(Error::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: now,
                not_before,
            },
        ));
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: now,
                not_after,
            },
        ));
    }
    Ok(())
}

/// A certificate's validity period.
fn validity(cert: &CertificateDer<'_>) -> Option<(UnixTime, UnixTime)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = |t: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.max(0) as u64));
    let validity = parsed.validity();
    Some((
        secs(validity.not_before.timestamp()),
        secs(validity.not_after.timestamp()),
    ))
}

/// A time as an operator reads it: `2026-01-31T00:00:00Z`.
pub fn date(time: UnixTime) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(time.as_secs()),
    )
    .to_string()
}

#[derive(Debug)]
struct PinnedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if self.pinned.iter().any(|p| p == end_entity) {
            check_validity(end_entity, now)?;
            return Ok(ClientCertVerified::assertion());
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct PinnedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    check_names: bool,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.pinned.iter().any(|p| p == end_entity) {
            check_validity(end_entity, now)?;
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if self.check_names {
                cert.verify_is_valid_for_subject_name(server_name)
                    .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
            }
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate's subject and alternative names, for logs: `CN=node1 (SAN 10.0.0.1,
/// node1.example)`.
pub fn describe_certificate(cert: &CertificateDer<'_>) -> String {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return "an unparsable certificate".to_string();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        parsed.subject().to_string()
    } else {
        format!("{} (SAN {})", parsed.subject(), names.join(", "))
    }
}

/// Which end of a connection this node is, which decides how an error is told: who
/// "the other end" is, and which setting is likely wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// This node dialled a peer (`sync`, `status`, the watcher's pushes).
    Client,
    /// A client dialled this node's listener.
    Server,
}

/// Finds a TLS error in an error chain and says in plain words, once, what it means for
/// an operator and what to do, as seen from `end`. `None` when the chain holds no TLS
/// error.
pub fn explain(err: &(dyn StdError + 'static), end: End) -> Option<String> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<Error>() {
            return Some(describe(tls, end));
        }
        // `io::Error::source()` skips the error it wraps: step into it explicitly.
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Whether `err` is webpki's refusal of a CA certificate (a self-signed one, say) as a
/// node's own: the sign of certificates made separately on each node.
pub fn is_ca_used_as_end_entity(err: &Error) -> bool {
    matches!(
        err,
        Error::InvalidCertificate(CertificateError::Other(other))
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            )
    )
}

/// What to do when the two ends do not trust each other's certificates.
const SAME_TRUST: &str = "every node's tls_ca_certificate must hold what signed every node's \
     certificate: make the certificates once for the whole group and copy them to every node, \
     either one `gosyncd cert self-signed HOST...` named by all three tls_* keys, or one \
     `gosyncd cert ca` whose ca.pem they all name, signing each node's `gosyncd cert node`";

fn describe(err: &Error, end: End) -> String {
    use rustls::AlertDescription as Alert;
    let them = match end {
        End::Client => "the peer",
        End::Server => "the client",
    };
    let what = match err {
        err if is_ca_used_as_end_entity(err) => {
            format!(
                "{them}'s certificate is a self-signed (CA) certificate that our \
                 tls_ca_certificate does not hold, as when the certificates are made \
                 separately on each node: {SAME_TRUST}"
            )
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "{them}'s certificate is not signed by the CA in our tls_ca_certificate: \
             {SAME_TRUST}"
        ),
        Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => format!(
            "the peer's certificate is not valid for {}, the host name or address in remotes \
             (it names {}): add it to the certificate's subjectAltName, or name the peer in \
             remotes as its certificate does",
            expected.to_str(),
            presented.join(", ")
        ),
        Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "the peer's certificate is not valid for the host name or address in remotes: add \
             it to the certificate's subjectAltName, or name the peer in remotes as its \
             certificate does"
                .to_string()
        }
        Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => {
            format!(
                "{them}'s certificate expired on {} (it is now {}): renew it",
                date(*not_after),
                date(*time)
            )
        }
        Error::InvalidCertificate(CertificateError::Expired) => {
            format!("{them}'s certificate has expired: renew it")
        }
        Error::InvalidCertificate(CertificateError::NotValidYetContext { time, not_before }) => {
            format!(
                "{them}'s certificate is not valid before {} (it is now {}: check both clocks)",
                date(*not_before),
                date(*time)
            )
        }
        Error::InvalidCertificate(CertificateError::NotValidYet) => {
            format!("{them}'s certificate is not valid yet (check both clocks)")
        }
        Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => match end {
            End::Client => "the peer's port does not speak TLS (plain HTTP?): the port in \
                 remotes must be the peer's bind_address port, where gosyncd serves HTTPS, \
                 not its metrics_address or another service"
                .to_string(),
            End::Server => "the client does not speak TLS (plain HTTP?): this port serves \
                 only HTTPS with a certificate of the group; Prometheus scrapes metrics_address"
                .to_string(),
        },
        Error::AlertReceived(
            Alert::UnknownCA
            | Alert::BadCertificate
            | Alert::CertificateRequired
            | Alert::CertificateUnknown,
        ) => {
            let ours = match end {
                End::Client => "tls_certificate",
                End::Server => "our tls_certificate",
            };
            format!(
                "{them} refused our certificate: it does not trust what signed {ours}, as when \
                 the certificates are made separately on each node: {SAME_TRUST}"
            )
        }
        Error::AlertReceived(Alert::CertificateExpired) => format!(
            "{them} refused our certificate as expired or not yet valid (check tls_certificate's \
             dates, and the clocks of both machines)"
        ),
        other => other.to_string(),
    };
    format!("TLS: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate in the original tool's style, valid over `years`.
    fn pinned(years: (i32, i32)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["10.0.0.1".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_pinned_certificate_outside_its_period_is_refused_with_its_dates() {
        let now = UnixTime::now();
        assert!(check_validity(&pinned((2020, 2200)), now).is_ok());
        let expired = describe(
            &check_validity(&pinned((2020, 2021)), now).unwrap_err(),
            End::Client,
        );
        assert!(
            expired.contains("expired on 2021-01-01T00:00:00Z"),
            "{expired}"
        );
        let early = describe(
            &check_validity(&pinned((2100, 2101)), now).unwrap_err(),
            End::Client,
        );
        assert!(
            early.contains("not valid before 2100-01-01T00:00:00Z"),
            "{early}"
        );
    }
}
