//! `tgpipe-ingress cert`: a self-signed certificate for a webhook without a CA.
//!
//! Telegram accepts a self-signed certificate when it is uploaded with `setWebhook`
//! (`certificate` parameter). The host (IP address or domain) must be the certificate's
//! Common Name and subjectAltName, which is what `openssl req -x509 -newkey ... -subj
//! "/CN=<ip>"` does by hand. The key is ECDSA P-256, which Telegram accepts.

use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair};

/// Why the certificate could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The host is not an IP address or a valid DNS name.
    #[error("cannot make a certificate for `{host}`: {reason}")]
    Generate {
        /// The host.
        host: String,
        /// rcgen's reason.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A PEM certificate and its PEM private key.
#[derive(Debug)]
pub struct SelfSigned {
    /// The certificate (public; upload it to Telegram).
    pub cert_pem: String,
    /// The private key (keep it on the server).
    pub key_pem: String,
}

/// Makes a certificate valid for `days` days for `host`.
pub fn self_signed(host: &str, days: u32) -> Result<SelfSigned, CertError> {
    let err = |e: rcgen::Error| CertError::Generate {
        host: host.to_owned(),
        reason: e.to_string(),
    };
    if host.parse::<std::net::IpAddr>().is_err() && !is_dns_name(host) {
        return Err(CertError::Generate {
            host: host.to_owned(),
            reason: "not an IP address or a DNS name".to_owned(),
        });
    }
    let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, host);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "tgpipe");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A DNS name: dot-separated labels of 1 to 63 letters, digits and inner hyphens, at
/// most 253 characters in all.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Writes the certificate and key files (the key readable by its owner only).
pub fn write(host: &str, days: u32, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
    let pair = self_signed(host, days)?;
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| CertError::Write { path, source }
    };
    std::fs::write(cert_path, &pair.cert_pem).map_err(write_err(cert_path))?;
    write_private(key_path, &pair.key_pem).map_err(write_err(key_path))?;
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    std::fs::write(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_for_an_ip_and_for_a_domain() {
        for host in ["203.0.113.7", "bot.example.com"] {
            let pair = self_signed(host, 365).unwrap();
            assert!(pair.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(pair.key_pem.contains("PRIVATE KEY"));
        }
        for bad in ["not a host!", "", "-bad.example", "a..b", "x_y.example"] {
            assert!(self_signed(bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn files_are_written_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        write("203.0.113.7", 10, &c, &k).unwrap();
        // The pair loads as a TLS server configuration.
        assert!(crate::serve::tls_acceptor(&c, &k).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
