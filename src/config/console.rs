//! `[console]`: the admin console's address and its users, validated like every section.
//!
//! The section lives here rather than in [`crate::console`] because the console serves the
//! runtime, which is built from this configuration: the console's pages import `config`, so
//! `config` cannot import the console. Like `[engine]`, it imports only leaves.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::CheckCtx;
use crate::secret::{Secret, SecretRef};

/// `[console]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the console listens, e.g. `127.0.0.1:8081`: an address of its own, apart from
    /// `[server]`'s webhooks, so that the console can stay on a private interface.
    pub listen: Spanned<String>,
    /// `[console.users.NAME]`.
    #[serde(default)]
    pub users: BTreeMap<String, Spanned<UserConfig>>,
}

/// `[console.users.NAME]` as written: one of `password` or `password_hash`, and a role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The password, as a secret reference (`"${CONSOLE_ANN_PASSWORD}"`).
    pub password: Option<SecretRef>,
    /// An argon2 hash in PHC form (`$argon2id$v=19$...`), so that the file holds no password.
    pub password_hash: Option<Spanned<String>>,
    /// `viewer` (reads everything) or `operator` (also replays, runs jobs, tests connections).
    pub role: Spanned<String>,
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads every page; changes nothing.
    Viewer,
    /// Also replays runs, runs jobs now, tests connections and directories.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// How a user's password is checked.
#[derive(Clone)]
pub enum Credential {
    /// The password itself, from a secret reference.
    Password(Secret),
    /// An argon2 hash in PHC form.
    Hash(String),
}

/// A console user, validated.
#[derive(Clone)]
pub struct ConsoleUser {
    pub role: Role,
    pub credential: Credential,
}

impl std::fmt::Debug for ConsoleUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUser").field("role", &self.role).finish_non_exhaustive()
    }
}

/// `[console]`, validated.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub listen: SocketAddr,
    pub users: BTreeMap<String, ConsoleUser>,
}

impl ConsoleConfig {
    /// The settings; `None` when the section has a problem, each recorded at its place.
    pub fn build(&self, ctx: &mut CheckCtx) -> Option<ConsoleSettings> {
        let errors = ctx.errors();
        let listen = match self.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => {
                if !a.ip().is_loopback() {
                    ctx.warning(
                        self.listen.span(),
                        format!(
                            "[console] listen: {a} is reachable from other hosts and the console speaks plain \
                             HTTP: put a TLS proxy in front of it, or listen on 127.0.0.1"
                        ),
                    );
                }
                Some(a)
            }
            Err(_) => {
                ctx.error(
                    self.listen.span(),
                    format!("[console] listen: {:?} is not an address such as 127.0.0.1:8081", self.listen.get_ref()),
                );
                None
            }
        };
        if self.users.is_empty() {
            ctx.error(
                self.listen.span(),
                "[console] has no users: add [console.users.NAME] with a password and a role, or nobody can log in",
            );
        }
        let mut users = BTreeMap::new();
        for (name, user) in &self.users {
            if let Some(u) = user.get_ref().build(name, user.span(), ctx) {
                users.insert(name.clone(), u);
            }
        }
        let listen = listen?;
        (ctx.errors() == errors).then_some(ConsoleSettings { listen, users })
    }
}

impl UserConfig {
    fn build(&self, name: &str, span: std::ops::Range<usize>, ctx: &mut CheckCtx) -> Option<ConsoleUser> {
        let what = format!("[console.users.{name}]");
        let role = match self.role.get_ref().as_str() {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            other => {
                let hint = crate::diag::did_you_mean(other, ["viewer", "operator"])
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                ctx.error(self.role.span(), format!("{what} role: {other:?} is not a role: viewer or operator{hint}"));
                None
            }
        };
        let credential = match (&self.password, &self.password_hash) {
            (Some(_), Some(h)) => {
                ctx.error(h.span(), format!("{what}: give either password or password_hash, not both"));
                None
            }
            (None, None) => {
                ctx.error(span, format!("{what} needs password = \"${{VAR}}\" or password_hash = \"$argon2id$...\""));
                None
            }
            (Some(p), None) => {
                if !p.is_template() {
                    ctx.warning(
                        p.span(),
                        format!(
                            "{what} password is written in the file: use \"${{VAR}}\" (an environment variable) \
                             or password_hash"
                        ),
                    );
                }
                match p.check(ctx, &format!("{what} password")) {
                    Some(s) if s.expose().is_empty() => {
                        ctx.error(p.span(), format!("{what} password is empty"));
                        None
                    }
                    other => other.map(Credential::Password),
                }
            }
            (None, Some(h)) => {
                match argon2::password_hash::phc::PasswordHash::new(h.get_ref()) {
                    Ok(parsed) if parsed.algorithm.as_str().starts_with("argon2") => {
                        Some(Credential::Hash(h.get_ref().clone()))
                    }
                    Ok(parsed) => {
                        ctx.error(
                            h.span(),
                            format!("{what} password_hash: {} is not an argon2 hash", parsed.algorithm.as_str()),
                        );
                        None
                    }
                    Err(e) => {
                        ctx.error(
                        h.span(),
                        format!("{what} password_hash: not a PHC string such as $argon2id$v=19$m=19456,t=2,p=1$...: {e}"),
                    );
                        None
                    }
                }
            }
        };
        Some(ConsoleUser { role: role?, credential: credential? })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(text: &str) -> Vec<String> {
        match Config::from_str(text, std::path::Path::new("t.toml")) {
            Ok(c) => c.warnings.iter().map(|d| d.to_string()).collect(),
            Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn console_problems_are_reported_at_their_place() {
        let text = "[console]\nlisten = \"localhost\"\n\n\
                    [console.users.ann]\nrole = \"operater\"\npassword = \"${TRIPLINE_UNIT_UNSET_CONSOLE}\"\n\n\
                    [console.users.bob]\nrole = \"viewer\"\n\n\
                    [console.users.cy]\nrole = \"viewer\"\npassword_hash = \"not a hash\"\n";
        let shown = problems(text);
        let expect = [
            "t.toml:2:10: [console] listen: \"localhost\" is not an address",
            "t.toml:5:8: [console.users.ann] role: \"operater\" is not a role: viewer or operator; did you mean \"operator\"?",
            "t.toml:6:12: [console.users.ann] password: environment variable TRIPLINE_UNIT_UNSET_CONSOLE is not set",
            "t.toml:8:1: [console.users.bob] needs password",
            "t.toml:13:17: [console.users.cy] password_hash: not a PHC string",
        ];
        for e in expect {
            assert!(shown.iter().any(|s| s.starts_with(e)), "{e:?} in {shown:#?}");
        }
    }

    #[test]
    fn a_console_without_users_or_on_every_interface_is_reported() {
        let shown = problems("[console]\nlisten = \"127.0.0.1:8081\"\n");
        assert!(shown.iter().any(|s| s.starts_with("t.toml:2:10: [console] has no users")), "{shown:#?}");
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        let shown = problems(&format!(
            "[console]\nlisten = \"0.0.0.0:8081\"\n[console.users.a]\nrole = \"viewer\"\npassword_hash = \"{hash}\"\n"
        ));
        assert!(shown.iter().any(|s| s.contains("warning: [console] listen: 0.0.0.0:8081 is reachable")), "{shown:#?}");
    }

    #[test]
    fn a_valid_console_builds_with_roles() {
        std::env::set_var("TRIPLINE_UNIT_CONSOLE_PW", "s3cret-console");
        let text = "[console]\nlisten = \"127.0.0.1:8081\"\n[console.users.ann]\nrole = \"operator\"\npassword = \"${TRIPLINE_UNIT_CONSOLE_PW}\"\n";
        let config = Config::from_str(text, std::path::Path::new("t.toml")).unwrap();
        let console = config.console.unwrap();
        assert_eq!(console.listen.port(), 8081);
        assert_eq!(console.users["ann"].role, super::Role::Operator);
        assert!(!format!("{:?}", console.users).contains("s3cret"));
    }
}
