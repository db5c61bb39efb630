//! A group CA: a new one, or an existing one loaded from its PEM files with its subject
//! name reproduced byte for byte, that issues node certificates and checks them with the
//! daemon's own rules. It writes no file (`gosyncd cert` does) and never makes a
//! self-signed node certificate (the parent module does).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::{Host, Pem};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::san_names;

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
            let hosts = [
                "10.0.0.2".parse::<Host>().unwrap(),
                "node2.example".parse::<Host>().unwrap(),
            ];
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
        let hosts = ["10.0.0.2".parse::<Host>().unwrap()];
        let pem = other.issue(&san_names(&hosts)).unwrap();
        assert!(ca.verify(&pem.cert, &hosts, now).is_err());
        let pem = ca.issue(&san_names(&hosts)).unwrap();
        ca.verify(&pem.cert, &hosts, now).unwrap();
        let err = ca
            .verify(&pem.cert, &["10.0.0.3".parse::<Host>().unwrap()], now)
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.3"), "{err}");
    }
}
