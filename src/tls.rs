//! One TLS setup for every HTTP client: building one reads and parses the system's CA
//! certificates (a few hundred milliseconds with OpenSSL 3), which each connection, token
//! endpoint and notification channel would otherwise do again, at every start of every
//! command.

use std::sync::LazyLock;

/// The system's TLS connector (native-tls, the system's CA certificates), built on first use;
/// `None` when it cannot be built, and then each client reports the reason when it is built.
static CONNECTOR: LazyLock<Option<native_tls::TlsConnector>> = LazyLock::new(|| native_tls::TlsConnector::new().ok());

/// A client builder that shares the process's TLS connector.
pub fn client_builder() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match CONNECTOR.as_ref() {
        Some(tls) => builder.use_preconfigured_tls(tls.clone()),
        None => builder,
    }
}
