//! Failure classes: whether trying the same thing again later can succeed.
//!
//! One table for every subsystem. Each subsystem's error type implements [`Classify`] once,
//! next to its variants; the class then travels *inside* the error (a script's host error
//! carries it, see `script::HostError`) to the run's status: a transient failure makes the run
//! `retrying`, a permanent one `failed`. Nothing decides the class beside the error.
//!
//! A leaf: this module imports nothing of the crate, so that every other module may depend on it.

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The same call may succeed later without anyone changing anything: a server that is
    /// down, busy or slow, a lock, a rate limit. The run is retried with a backoff.
    Transient,
    /// Someone has to change something first (the input, the script, the configuration, a
    /// permission), or retrying could repeat an effect. The run fails and waits for a replay.
    Permanent,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Permanent => "permanent",
        }
    }

    pub fn is_transient(self) -> bool {
        self == Class::Transient
    }

    /// The class of an HTTP answer's status, for every HTTP peer tripline talks to
    /// (connections, notification webhooks): 408 Request Timeout, 429 Too Many Requests and
    /// every 5xx are transient; everything else that is not 2xx is permanent.
    pub fn of_http_status(status: u16) -> Class {
        if status == 408 || status == 429 || (500..600).contains(&status) {
            Class::Transient
        } else {
            Class::Permanent
        }
    }
}

/// An error that knows its [`Class`].
pub trait Classify {
    fn class(&self) -> Class;

    fn is_transient(&self) -> bool {
        self.class().is_transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(Class::of_http_status(s), Class::Transient, "{s}");
        }
        for s in [300, 400, 401, 403, 404, 409, 422, 600] {
            assert_eq!(Class::of_http_status(s), Class::Permanent, "{s}");
        }
    }
}
