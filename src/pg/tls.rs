//! TLS for both kinds of connection, SQL sessions (through the `postgres` crate) and the
//! replication client, through rustls, with libpq's `sslmode` meanings:
//!
//! - `disable`: never; `allow`, `prefer`: TLS when the server offers it; `require`: TLS
//!   or no connection. These three do not check the certificate, except that `require`
//!   checks the chain as `verify-ca` does when a root certificate file exists (libpq
//!   does the same).
//! - `verify-ca`: the certificate chains to a CA in `sslrootcert`; `verify-full`: and
//!   it is issued for the host name connected to.
//!
//! Unix sockets never use TLS (PostgreSQL offers none there). A client certificate
//! (`sslcert`/`sslkey`, by default `~/.postgresql/postgresql.crt` and `.key`) is sent
//! when its file exists.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conninfo::ConnParams;

/// Whether a connection uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Never,
    IfOffered,
    Always,
}

/// How to connect to one server: whether TLS is needed, and how it is set up.
#[derive(Clone)]
pub struct Tls {
    pub need: Need,
    config: Option<Arc<ClientConfig>>,
    /// Where the CA certificates came from, for messages.
    roots: Option<PathBuf>,
}

impl Tls {
    /// The TLS settings of `params` for `host` (a socket directory needs none).
    pub fn for_host(params: &ConnParams, host: &str) -> Result<Tls> {
        let need = need(params, host);
        if need == Need::Never {
            return Ok(Tls {
                need,
                config: None,
                roots: None,
            });
        }
        let roots_file = root_cert_file(params);
        let verify = match params.sslmode.as_str() {
            "verify-full" => Verify::Full,
            "verify-ca" => Verify::Chain,
            "require" if roots_file.as_ref().is_some_and(|f| f.exists()) => Verify::Chain,
            _ => Verify::Nothing,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ChosenVerifier {
            chain: match verify {
                Verify::Nothing => None,
                _ => Some(web_pki(roots_file.as_deref(), &provider, &params.sslmode)?),
            },
            check_name: verify == Verify::Full,
            provider: provider.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("the TLS library has no usable protocol version")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match client_identity(params)? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .context("the client certificate and key do not match")?,
            None => builder.with_no_client_auth(),
        };
        Ok(Tls {
            need,
            config: Some(Arc::new(config)),
            roots: roots_file.filter(|_| verify != Verify::Nothing),
        })
    }

    /// A blocking TLS session over `stream` to `host`.
    pub fn client(&self, host: &str) -> Result<rustls::ClientConnection> {
        let config = self.config.clone().context("TLS is not configured")?;
        let name = ServerName::try_from(host.to_string())
            .with_context(|| format!("'{host}' is not a host name TLS can check"))?;
        Ok(rustls::ClientConnection::new(config, name)?)
    }

    /// One sentence for a failed handshake: what was wrong and what to do.
    pub fn explain(&self, host: &str, error: &rustls::Error) -> String {
        let roots = self
            .roots
            .as_ref()
            .map_or("sslrootcert".to_string(), |r| r.display().to_string());
        match error {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => format!(
                "the server's certificate is not issued for host '{host}' (it names {}); sslmode=verify-full \
                 checks the host name: connect by a name the certificate holds, or reissue the certificate",
                if presented.is_empty() {
                    "no host".to_string()
                } else {
                    presented
                        .iter()
                        .map(|p| bare_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => format!(
                "the server's certificate is not issued for host '{host}'; sslmode=verify-full checks \
                 the host name: connect by a name the certificate holds, or reissue the certificate"
            ),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "the server's certificate is not signed by a CA in {roots}: set sslrootcert to the CA that \
                 issued it"
            ),
            rustls::Error::InvalidCertificate(e) => {
                format!("the server's certificate is not accepted ({e:?})")
            }
            other => format!("the TLS handshake with the server failed: {other}"),
        }
    }

    /// TLS for a `postgres` crate session to `host`.
    pub fn for_session(&self) -> SessionTls {
        SessionTls { tls: self.clone() }
    }
}

/// Whether a connection to `host` uses TLS under `params`' sslmode.
pub fn need(params: &ConnParams, host: &str) -> Need {
    match params.sslmode.as_str() {
        _ if host.starts_with('/') => Need::Never,
        "disable" => Need::Never,
        "allow" | "prefer" => Need::IfOffered,
        _ => Need::Always,
    }
}

/// What a plain-text server answers a connection that needs TLS.
pub const NO_TLS: &str = "the server does not accept TLS connections and the sslmode needs TLS: \
     turn on ssl in the server's configuration, or lower sslmode";

/// `localhost` of rustls' `DnsName("localhost")`.
fn bare_name(presented: &str) -> &str {
    match presented.split_once('"') {
        Some((_, rest)) => rest.split('"').next().unwrap_or(rest),
        None => presented,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

/// `sslrootcert`, else `~/.postgresql/root.crt`.
fn root_cert_file(params: &ConnParams) -> Option<PathBuf> {
    params
        .sslrootcert
        .clone()
        .or_else(|| crate::os::home_dir().map(|h| h.join(".postgresql/root.crt")))
}

fn web_pki(
    file: Option<&Path>,
    provider: &Arc<CryptoProvider>,
    mode: &str,
) -> Result<Arc<WebPkiServerVerifier>> {
    let Some(file) = file.filter(|f| f.exists()) else {
        bail!(
            "sslmode={mode} checks the server's certificate, but there is no root certificate file \
             (sslrootcert, or ~/.postgresql/root.crt): set sslrootcert to the CA's certificate"
        );
    };
    let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.with_context(|| format!("{} is not a PEM certificate file", file.display()))?;
        roots.add(cert).with_context(|| {
            format!(
                "{} holds a certificate that is not usable as a CA",
                file.display()
            )
        })?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", file.display());
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("cannot set up certificate checking")
}

/// The client certificate chain and key, if a certificate file is set or exists at
/// libpq's default place.
fn client_identity(
    params: &ConnParams,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let home = crate::os::home_dir().unwrap_or_default();
    let cert = params
        .sslcert
        .clone()
        .unwrap_or_else(|| home.join(".postgresql/postgresql.crt"));
    if !cert.exists() {
        if params.sslcert.is_some() {
            bail!("sslcert {} does not exist", cert.display());
        }
        return Ok(None);
    }
    let key = params
        .sslkey
        .clone()
        .unwrap_or_else(|| home.join(".postgresql/postgresql.key"));
    let pem = std::fs::read(&cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", cert.display()))?;
    let key_pem = std::fs::read(&key).with_context(|| {
        format!(
            "cannot read the client key {} (sslkey) for certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    Ok(Some((certs, key)))
}

/// Checks the certificate as far as the sslmode asks.
#[derive(Debug)]
struct ChosenVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChosenVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls error inside an error chain (the `postgres` crate's, or an I/O error
/// from the TLS stream), if there is one.
pub fn rustls_error<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// [`Tls`] for the `postgres` crate: its `MakeTlsConnect`.
pub struct SessionTls {
    tls: Tls,
}

pub struct SessionConnect {
    tls: Tls,
    host: String,
}

/// A TLS stream of a `postgres` crate session.
pub struct SessionStream(tokio_rustls::client::TlsStream<postgres::Socket>);

impl postgres::tls::MakeTlsConnect<postgres::Socket> for SessionTls {
    type Stream = SessionStream;
    type TlsConnect = SessionConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<SessionConnect> {
        Ok(SessionConnect {
            tls: self.tls.clone(),
            host: domain.to_string(),
        })
    }
}

impl postgres::tls::TlsConnect<postgres::Socket> for SessionConnect {
    type Stream = SessionStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<SessionStream>> + Send>>;

    fn connect(self, stream: postgres::Socket) -> Self::Future {
        Box::pin(async move {
            let config = self
                .tls
                .config
                .clone()
                .ok_or_else(|| io::Error::other("TLS is not configured"))?;
            let name = ServerName::try_from(self.host.clone()).map_err(io::Error::other)?;
            let connector = tokio_rustls::TlsConnector::from(config);
            Ok(SessionStream(connector.connect(name, stream).await?))
        })
    }
}

impl postgres::tls::TlsStream for SessionStream {
    fn channel_binding(&self) -> postgres::tls::ChannelBinding {
        postgres::tls::ChannelBinding::none()
    }
}

impl AsyncRead for SessionStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
