//! The one connection per directory: opened on first use, bound, shared, reopened when it
//! drops.
//!
//! ldap3's `Ldap` handle multiplexes: every clone sends its operation on the same socket
//! with its own message id, so many callers have many operations in flight at once
//! (pipelining). Handing out a clone takes a short `std` lock; only opening a connection
//! waits on an async lock, so that a burst of callers after an outage opens one connection,
//! not one each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError};
use tracing::{debug, warn};

use super::ad;
use super::error::{rc_sentence, DirectoryError};
use crate::secret::redact;
use crate::secret::Secret;

/// How to open and bind a connection.
pub(crate) struct ConnSpec {
    /// The directory's configured name, for errors.
    pub directory: String,
    pub url: String,
    pub starttls: bool,
    /// `None` for plain `ldap://`.
    pub tls: Option<native_tls::TlsConnector>,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    pub bind: Option<(String, Secret)>,
    /// `allow_plaintext_bind = true`: the admin accepts the bind password in clear.
    pub allow_plaintext_bind: bool,
}

impl ConnSpec {
    /// Whether traffic is encrypted (LDAPS, or StartTLS on `ldap://`).
    pub fn is_secure(&self) -> bool {
        self.url.to_ascii_lowercase().starts_with("ldaps://") || self.starttls
    }
}

/// Builds the TLS connector of a directory from its settings.
pub(crate) fn tls_connector(verify: bool, ca_pem: Option<&[u8]>) -> Result<native_tls::TlsConnector, DirectoryError> {
    let mut builder = native_tls::TlsConnector::builder();
    if !verify {
        builder.danger_accept_invalid_certs(true).danger_accept_invalid_hostnames(true);
    }
    if let Some(pem) = ca_pem {
        let certs = native_tls::Certificate::stack_from_pem(pem)
            .map_err(|e| DirectoryError::Config(format!("ca_file holds no usable PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(DirectoryError::Config("ca_file holds no PEM certificate".into()));
        }
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| DirectoryError::Config(format!("TLS setup failed: {e}")))
}

/// A handle on the current connection, and which connection it is.
pub(crate) struct Conn {
    pub ldap: Ldap,
    pub generation: u64,
}

/// The lazily opened, shared connection of one directory.
pub(crate) struct Pool {
    spec: ConnSpec,
    live: Mutex<Option<(Ldap, u64)>>,
    connecting: tokio::sync::Mutex<()>,
    /// The last failed attempt: callers that waited for it fail with it instead of each
    /// trying again (a server that drops packets would otherwise cost one connect timeout
    /// per waiting caller).
    last_failure: Mutex<Option<(Instant, DirectoryError)>>,
    opened: AtomicU64,
}

impl Pool {
    pub fn new(spec: ConnSpec) -> Self {
        Self {
            spec,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            opened: AtomicU64::new(0),
        }
    }

    /// How many connections were opened so far (1 while the first one lives).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A handle on the live connection, opening and binding one if there is none.
    pub async fn get(&self) -> Result<Conn, DirectoryError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let asked = Instant::now();
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some((at, error)) = &*self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            if *at >= asked {
                return Err(error.clone());
            }
        }
        let ldap = match self.open().await {
            Ok(ldap) => ldap,
            Err(error) => {
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), error.clone()));
                return Err(error);
            }
        };
        let generation = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some((ldap.clone(), generation));
        Ok(Conn { ldap, generation })
    }

    /// Forgets connection `generation` after it broke, so the next call opens a new one.
    pub fn discard(&self, generation: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*live, Some((_, g)) if *g == generation) {
            *live = None;
        }
    }

    fn current(&self) -> Option<Conn> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let (ldap, generation) = live.as_mut()?;
        (!ldap.is_closed()).then(|| Conn { ldap: ldap.clone(), generation: *generation })
    }

    async fn open(&self) -> Result<Ldap, DirectoryError> {
        let spec = &self.spec;
        let mut settings = LdapConnSettings::new().set_conn_timeout(spec.connect_timeout).set_starttls(spec.starttls);
        if let Some(tls) = &spec.tls {
            settings = settings.set_connector(tls.clone());
        }
        // The configuration refuses this already; checked again here, before the socket is
        // opened, because this is where the password would leave.
        if spec.bind.is_some() && !spec.is_secure() && !spec.allow_plaintext_bind {
            return Err(DirectoryError::InsecureConnection { directory: spec.directory.clone() });
        }
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(settings, &spec.url).await.map_err(|e| self.connect_error(e))?;
        let url = spec.url.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.drive().await {
                debug!(%url, %error, "Directory connection ended.");
            }
        });
        if let Some((bind_dn, password)) = &spec.bind {
            if !spec.is_secure() {
                warn!(url = %spec.url, "Binding over an unencrypted connection (allow_plaintext_bind = true); use ldaps:// or starttls.");
            }
            let result = ldap.with_timeout(spec.op_timeout).simple_bind(bind_dn, password.expose()).await;
            let result = match result {
                Ok(r) => r,
                Err(LdapError::Timeout { .. }) => {
                    return Err(DirectoryError::Timeout { op: format!("bind to {}", spec.url), after: spec.op_timeout })
                }
                Err(e) => return Err(self.connect_error(e)),
            };
            if result.rc != 0 {
                let text = redact(result.text.trim_end_matches('\0')).into_owned();
                let reason = match ad::bind_sentence(&text) {
                    Some(s) => s.to_string(),
                    None if text.is_empty() => rc_sentence(result.rc).to_string(),
                    None => format!("{} ({text})", rc_sentence(result.rc)),
                };
                return Err(DirectoryError::BindFailed { bind_dn: bind_dn.clone(), reason });
            }
        }
        debug!(url = %spec.url, "Directory connection opened.");
        Ok(ldap)
    }

    fn connect_error(&self, e: LdapError) -> DirectoryError {
        let url = self.spec.url.clone();
        match e {
            LdapError::Io { source } => DirectoryError::Unreachable { url, reason: source.to_string() },
            LdapError::Timeout { .. } => DirectoryError::Unreachable {
                url,
                reason: format!("no connection within {:?}", self.spec.connect_timeout),
            },
            LdapError::NativeTLS { source } => DirectoryError::Tls { url, reason: source.to_string() },
            LdapError::LdapResult { result } => {
                DirectoryError::Tls { url, reason: format!("StartTLS was refused: {}", rc_sentence(result.rc)) }
            }
            LdapError::UrlParsing { source } => DirectoryError::Config(format!("url {url}: {source}")),
            other => DirectoryError::Unreachable { url, reason: redact(&other.to_string()).into_owned() },
        }
    }
}
