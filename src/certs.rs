//! Certificate generation with rcgen: a group CA and node certificates, or one
//! self-signed certificate in the original tool's style (CA:TRUE, used by every node).
//! Used by `gosyncd demo` and by the tests.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, PEM-encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A certificate authority that signs node certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM-encoded: what `tls_ca_certificate` points at.
    pub cert_pem: String,
}

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Authority, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
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
}

/// One self-signed certificate valid for `names`, carrying CA:TRUE like
/// `openssl req -x509` makes: the original setup where all three `tls_*` keys name it.
pub fn self_signed(names: &[String]) -> Result<Pem, rcgen::Error> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "gosyncd group");
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
