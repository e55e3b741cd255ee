//! Who is logged in: passwords checked (argon2 hashes, or `${VAR}` secrets compared in
//! constant time), sessions behind an `HttpOnly`, `SameSite=Strict` cookie, a CSRF token per
//! session for every form, and failed logins slowed per client address and per user name.
//!
//! Sessions live in memory: a restart logs everyone out, which is the safe way to lose them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ConsoleUser, Credential, Role};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tripline_session";
/// The cookie that carries the login form's CSRF token until a session exists.
pub const LOGIN_COOKIE: &str = "tripline_login";
/// How long a session lasts after its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The most sessions kept at once; the oldest goes first when a login would pass it.
const MAX_SESSIONS: usize = 10_000;
/// The first failed login's delay; each further failure from the same address or for the
/// same user doubles it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// The most addresses and names whose failures are remembered (a flood of invented user
/// names must not fill memory).
const MAX_THROTTLED: usize = 4096;

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The session cookie's value, to end this session at logout.
    token_hash: [u8; 32],
    expires: Instant,
}

impl Session {
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// Whether a form's token is this session's, compared in constant time.
    pub fn csrf_matches(&self, given: &str) -> bool {
        given.len() == self.csrf.len() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// A random token: 32 bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The sessions in force, by the hash of their cookie (so that the map holds no usable token).
#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Starts a session; returns the cookie's value.
    pub fn start(&self, user: &str, role: Role) -> String {
        let token = random_token();
        let token_hash = hash_token(&token);
        let session = Session {
            user: user.to_string(),
            role,
            csrf: random_token(),
            token_hash,
            expires: Instant::now() + SESSION_LIFETIME,
        };
        let mut map = lock(&self.by_token);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(token_hash, session);
        token
    }

    /// The session a request's cookie names, when it is in force.
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let mut map = lock(&self.by_token);
        let key = hash_token(&token);
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout).
    pub fn end(&self, session: &Session) {
        lock(&self.by_token).remove(&session.token_hash);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value for one of the console's cookies: never readable by scripts, never
/// sent by another site's page.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", max_age.as_secs())
}

/// A `Set-Cookie` value that removes a cookie.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Checks a password against a user's credential. Blocking (argon2 is slow on purpose).
/// An unknown user is checked against a fixed hash, so that the answer takes as long.
pub fn verify(user: Option<&ConsoleUser>, password: &str) -> bool {
    use argon2::{Argon2, PasswordVerifier};
    match user.map(|u| &u.credential) {
        Some(Credential::Password(secret)) => {
            let (a, b) = (Sha256::digest(password.as_bytes()), Sha256::digest(secret.expose().as_bytes()));
            bool::from(a.ct_eq(&b))
        }
        Some(Credential::Hash(hash)) => Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok(),
        None => {
            let _ = Argon2::default().verify_password(password.as_bytes(), unknown_user_hash());
            false
        }
    }
}

/// A hash no password matches, computed once, to spend on unknown users what a check costs.
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        use argon2::{Argon2, PasswordHasher};
        Argon2::default().hash_password(random_token().as_bytes()).map(|h| h.to_string()).unwrap_or_default()
    })
}

/// Whose failures slow the next login.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Who {
    Address(IpAddr),
    User(String),
}

/// Failed logins, per client address and per user name: each failure doubles the wait
/// before the next attempt of either is checked.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<Who, (u32, Instant)>>,
}

impl Throttle {
    /// How long an attempt from `addr` for `user` waits before it is checked.
    pub fn delay(&self, addr: IpAddr, user: &str) -> Duration {
        let now = Instant::now();
        let map = lock(&self.failures);
        let failures = [Who::Address(addr), Who::User(user.to_string())]
            .iter()
            .filter_map(|w| map.get(w))
            .filter(|(_, at)| now.duration_since(*at) < FAILURE_MEMORY)
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(0);
        delay_after(failures)
    }

    /// Records a failed attempt.
    pub fn failed(&self, addr: IpAddr, user: &str) {
        let now = Instant::now();
        let mut map = lock(&self.failures);
        if map.len() >= MAX_THROTTLED {
            map.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_MEMORY);
        }
        // Still full of fresh failures: the address counts, invented names no longer do.
        let whos = if map.len() >= MAX_THROTTLED {
            vec![Who::Address(addr)]
        } else {
            vec![Who::Address(addr), Who::User(user.to_string())]
        };
        for who in whos {
            let entry = map.entry(who).or_insert((0, now));
            entry.0 = entry.0.saturating_add(1);
            entry.1 = now;
        }
    }

    /// Forgets the failures of a successful login's address and user.
    pub fn succeeded(&self, addr: IpAddr, user: &str) {
        let mut map = lock(&self.failures);
        map.remove(&Who::Address(addr));
        map.remove(&Who::User(user.to_string()));
    }
}

/// The wait after `failures` failed logins: none, then 250 ms doubling up to 8 s.
fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_DELAY.saturating_mul(1u32 << (failures - 1).min(10)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn failed_logins_wait_longer_each_time_from_an_address_or_for_a_user() {
        let t = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        assert_eq!(t.delay(a, "ann"), Duration::ZERO);
        t.failed(a, "ann");
        assert_eq!(t.delay(a, "bob"), FIRST_DELAY);
        t.failed(a, "ann");
        assert_eq!(t.delay(a, "bob"), FIRST_DELAY * 2);
        // Another address trying the same user waits as long.
        assert_eq!(t.delay(b, "ann"), FIRST_DELAY * 2);
        for _ in 0..40 {
            t.failed(a, "ann");
        }
        assert_eq!(t.delay(a, "ann"), MAX_DELAY);
        t.succeeded(a, "ann");
        assert_eq!(t.delay(a, "ann"), Duration::ZERO);
    }

    #[test]
    fn invented_user_names_do_not_fill_memory() {
        let t = Throttle::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..(MAX_THROTTLED * 2) {
            t.failed(a, &format!("user{i}"));
        }
        assert!(lock(&t.failures).len() <= MAX_THROTTLED);
        assert_eq!(t.delay(a, "anyone"), MAX_DELAY);
    }

    #[test]
    fn passwords_and_hashes_are_checked() {
        use argon2::{Argon2, PasswordHasher};
        let plain = ConsoleUser { role: Role::Viewer, credential: Credential::Password(Secret::new("pw-unit-1")) };
        assert!(verify(Some(&plain), "pw-unit-1"));
        assert!(!verify(Some(&plain), "pw-unit-2"));
        let hash = Argon2::default().hash_password(b"pw-unit-3").unwrap().to_string();
        let hashed = ConsoleUser { role: Role::Operator, credential: Credential::Hash(hash) };
        assert!(verify(Some(&hashed), "pw-unit-3"));
        assert!(!verify(Some(&hashed), "pw-unit-1"));
        assert!(!verify(None, "pw-unit-3"));
    }

    #[test]
    fn sessions_are_found_by_their_cookie_and_end_at_logout() {
        let sessions = Sessions::default();
        let token = sessions.start("ann", Role::Viewer);
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("other=1; {SESSION_COOKIE}={token}").parse().unwrap());
        let s = sessions.find(&headers).expect("the session");
        assert_eq!(s.user, "ann");
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches("x"));
        sessions.end(&s);
        assert!(sessions.find(&headers).is_none());
        let mut forged = HeaderMap::new();
        forged.insert(header::COOKIE, format!("{SESSION_COOKIE}={}", random_token()).parse().unwrap());
        assert!(sessions.find(&forged).is_none());
    }
}
