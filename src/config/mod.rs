//! Configuration: `tripline.toml` read and validated into [`Config`], the root of the
//! configuration document.
//!
//! Each section's type lives with what it configures (`directory`, `connection`,
//! `scheduler`, `server`, `webhook`, `notification`, `script` for `[limits]`; `[engine]` is
//! this module's own) and imports only leaves; nothing under this module imports it. A
//! section's `build` turns it into what runs and is the one place that reports its problems,
//! so that `tripline check` and start-up say the same thing in the same words. This module
//! reads the file, resolves relative folders against the file's own folder, and builds every
//! section, so that all problems are reported at once, each as `path:line:col: message`.

mod console;
mod engine;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::connection::{Connection, ConnectionConfig, TokenSlot};
use crate::diag::{CheckCtx, Diagnostic};
use crate::directory::{Directory, DirectoryConfig};
use crate::notification::{Channel, NotifyConfig};
use crate::scheduler::{Job, JobConfig};
use crate::script::lint::KnownNames;
use crate::script::LimitsConfig;
use crate::secret::Secrets;
use crate::server::{ServerConfig, ServerSettings};
use crate::webhook::{WebhookConfig, Webhooks};
pub use console::{ConsoleConfig, ConsoleSettings, ConsoleUser, Credential, Role};
pub use engine::{AfterFailure, EngineConfig};

/// `tripline.toml` as written: each section as its own module reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    engine: EngineConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    directories: BTreeMap<String, Spanned<DirectoryConfig>>,
    #[serde(default)]
    connections: BTreeMap<String, Spanned<ConnectionConfig>>,
    #[serde(default)]
    jobs: BTreeMap<String, Spanned<JobConfig>>,
    #[serde(default)]
    server: Option<ServerConfig>,
    #[serde(default)]
    webhooks: BTreeMap<String, Spanned<WebhookConfig>>,
    #[serde(default)]
    notify: BTreeMap<String, Spanned<NotifyConfig>>,
    #[serde(default)]
    console: Option<ConsoleConfig>,
    #[serde(default)]
    store: Option<crate::store::StoreConfig>,
}

/// A TOML error with a suggestion when it is an unknown key (serde's "unknown field `x`,
/// expected one of `a`, `b`" gets "; did you mean `a`?" when one is close).
fn with_suggestion(message: &str) -> String {
    let suggestion = (|| {
        let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("unknown variant `"))?;
        let (field, rest) = rest.split_once('`')?;
        let expected = rest.split_once("expected ")?.1;
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        crate::diag::did_you_mean(field, names)
    })();
    match suggestion {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message.to_string(),
    }
}

/// The validated configuration: every section built into what runs.
pub struct Config {
    /// The file it was read from (`None` when built in code).
    pub path: Option<PathBuf>,
    /// `[engine]`, its folders resolved against the file's folder.
    pub engine: EngineConfig,
    pub limits: LimitsConfig,
    /// `[directories.NAME]` (nothing is connected before a script calls one).
    pub directories: BTreeMap<String, Arc<Directory>>,
    /// `[connections.NAME]`; their OAuth2 tokens go where [`Config::tokens`] is bound.
    pub connections: BTreeMap<String, Arc<Connection>>,
    /// Connections left out because a secret is not set here, with why, when the file was
    /// loaded with [`Secrets::Defer`]: the runs that use them fail saying so.
    pub unavailable_connections: BTreeMap<String, String>,
    /// Where the connections keep their OAuth2 tokens: in memory until the runtime binds its
    /// store.
    pub tokens: Arc<TokenSlot>,
    /// `[jobs.NAME]`, scheduled or not; the runtime keeps those whose script is loaded.
    pub jobs: BTreeMap<String, Job>,
    /// `[server]`.
    pub server: Option<ServerSettings>,
    /// `[webhooks.NAME]`, by path.
    pub webhooks: Webhooks,
    /// `[notify.NAME]`.
    pub notify: BTreeMap<String, Arc<Channel>>,
    /// `[console]`: no section, no console.
    pub console: Option<ConsoleSettings>,
    /// `[store]`: the PostgreSQL store several workers share; `None`, the SQLite file in
    /// `[engine] data_dir`.
    pub store: Option<crate::store::postgres::PgSettings>,
    /// Every name the file declares, built or not.
    pub declared: Declared,
    /// Problems of the file that do not stop it from being used (see [`Severity::Warning`]);
    /// `tripline run` logs them at start, `check` prints them.
    ///
    /// [`Severity::Warning`]: crate::diag::Severity::Warning
    pub warnings: Vec<Diagnostic>,
}

/// The names of the sections a file declares, whether they built or not: scripts and rules are
/// checked against them, so that a section in error is reported once, at its place, and not
/// again by every script or rule that names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    pub directories: BTreeSet<String>,
    pub connections: BTreeSet<String>,
    pub jobs: BTreeSet<String>,
    pub notify: BTreeSet<String>,
    /// The entities of `[webhooks.NAME]`: what records arrive with from outside scripts.
    pub entities: BTreeSet<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("engine", &self.engine)
            .field("limits", &self.limits)
            .field("declared", &self.declared)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads a configuration file's text.
    pub fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
        std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::file(path, format!("cannot read configuration: {e}"))])
    }

    /// Reads and validates a configuration file; every problem is returned at once.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        Self::from_str(&Self::read(path)?, path)
    }

    /// [`Config::load`] with the given handling of secrets.
    pub fn load_with(path: &Path, secrets: Secrets) -> Result<Config, Vec<Diagnostic>> {
        Self::from_str_with(&Self::read(path)?, path, secrets)
    }

    /// Validates configuration text that was read from `path`. Warnings do not refuse it:
    /// they are kept in [`Config::warnings`].
    pub fn from_str(source: &str, path: &Path) -> Result<Config, Vec<Diagnostic>> {
        Self::from_str_with(source, path, Secrets::Resolve)
    }

    fn from_str_with(source: &str, path: &Path, secrets: Secrets) -> Result<Config, Vec<Diagnostic>> {
        match Self::parse_with(source, path, secrets) {
            Ok((config, diags)) if !crate::diag::any_error(&diags) => Ok(Config { warnings: diags, ..config }),
            Ok((_, diags)) | Err(diags) => Err(diags),
        }
    }

    /// Reads configuration text into a `Config` and the problems of its sections. `Err` only
    /// when the file does not parse at all; otherwise the config is usable for locating the
    /// rule and script folders even when sections have problems (so `check` reports those too):
    /// a section in error is left out of it.
    pub fn parse(source: &str, path: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        Self::parse_with(source, path, Secrets::Resolve)
    }

    /// [`Config::parse`] with the given handling of secrets.
    pub fn parse_with(
        source: &str,
        path: &Path,
        secrets: Secrets,
    ) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let doc: Document = toml::from_str(source)
            .map_err(|e| vec![Diagnostic::span(path, source, e.span(), with_suggestion(e.message().trim_end()))])?;
        // An empty parent (a bare file name) keeps paths relative to the working folder.
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut ctx = CheckCtx::new(path, source, &base_dir);
        if secrets == Secrets::Defer {
            ctx.deferred = Some(Vec::new());
        }
        let config = doc.build(&mut ctx);
        Ok((Config { path: Some(path.to_path_buf()), ..config }, ctx.diags))
    }

    /// A configuration built in code (embedding), with the given folders.
    pub fn with_engine(engine: EngineConfig) -> Config {
        Config {
            path: None,
            engine,
            limits: LimitsConfig::default(),
            directories: BTreeMap::new(),
            connections: BTreeMap::new(),
            unavailable_connections: BTreeMap::new(),
            tokens: Arc::default(),
            jobs: BTreeMap::new(),
            server: None,
            webhooks: Webhooks::default(),
            notify: BTreeMap::new(),
            console: None,
            store: None,
            declared: Declared::default(),
            warnings: Vec::new(),
        }
    }

    /// The names scripts are checked against: every one the file declares, and those of
    /// sections added in code.
    pub fn known_names(&self) -> KnownNames {
        let with = |declared: &BTreeSet<String>, built: Vec<&String>| {
            Some(declared.iter().chain(built).cloned().collect::<BTreeSet<String>>())
        };
        KnownNames {
            directories: with(&self.declared.directories, self.directories.keys().collect()),
            connections: with(&self.declared.connections, self.connections.keys().collect()),
            notify: with(&self.declared.notify, self.notify.keys().collect()),
            entities: Some(self.declared.entities.iter().cloned().chain(self.webhooks.entities()).collect()),
        }
    }
}

impl Document {
    /// Every section built, in the order of the file's sections; each problem goes to `ctx`.
    fn build(self, ctx: &mut CheckCtx) -> Config {
        let engine = self.engine.build(ctx);
        self.limits.check(ctx);
        let directories =
            build_each(&self.directories, ctx, |name, d, span, ctx| d.build(name, span, ctx).map(Arc::new));
        let tokens = Arc::new(TokenSlot::default());
        let mut connections = BTreeMap::new();
        let mut unavailable_connections = BTreeMap::new();
        for (name, c) in &self.connections {
            let deferred = ctx.deferrals();
            match c.get_ref().build(name, c.span(), ctx, tokens.clone()) {
                Some(conn) => {
                    connections.insert(name.clone(), Arc::new(conn));
                }
                None => {
                    if let Some(why) = deferred_since(ctx, deferred) {
                        tracing::debug!(connection = %name, %why, "Connection left out: it fails the runs that use it.");
                        unavailable_connections.insert(name.clone(), why);
                    }
                }
            }
        }
        let jobs = build_each(&self.jobs, ctx, |name, j, span, ctx| j.build(name, span, ctx));
        let server = self.server.as_ref().and_then(|s| s.build(ctx));
        let webhooks = crate::webhook::build(&self.webhooks, self.server.is_some(), ctx);
        let notify = build_each(&self.notify, ctx, |name, n, span, ctx| n.build(name, span, ctx).map(Arc::new));
        let console = self.console.as_ref().and_then(|c| c.build(ctx));
        let store = self.store.as_ref().and_then(|s| s.build(ctx));
        let declared = Declared {
            directories: self.directories.keys().cloned().collect(),
            connections: self.connections.keys().cloned().collect(),
            jobs: self.jobs.keys().cloned().collect(),
            notify: self.notify.keys().cloned().collect(),
            entities: self.webhooks.values().map(|w| w.get_ref().entity.get_ref().clone()).collect(),
        };
        Config {
            path: None,
            engine,
            limits: self.limits,
            directories,
            connections,
            unavailable_connections,
            tokens,
            jobs,
            server,
            webhooks,
            notify,
            console,
            store,
            declared,
            warnings: Vec::new(),
        }
    }
}

/// Builds every section of a table; a section that does not build is left out (its problems
/// are in `ctx`; one left out for a secret that is not set here is only logged).
fn build_each<C, T>(
    sections: &BTreeMap<String, Spanned<C>>,
    ctx: &mut CheckCtx,
    build: impl Fn(&str, &C, std::ops::Range<usize>, &mut CheckCtx) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut built = BTreeMap::new();
    for (name, section) in sections {
        let deferred = ctx.deferrals();
        match build(name, section.get_ref(), section.span(), ctx) {
            Some(t) => {
                built.insert(name.clone(), t);
            }
            None => {
                if let Some(why) = deferred_since(ctx, deferred) {
                    tracing::debug!(section = %name, %why, "Left out until its secret is set; what uses it fails.");
                }
            }
        }
    }
    built
}

/// The problems deferred to a use since there were `before` of them, joined; `None` when
/// there are none.
fn deferred_since(ctx: &CheckCtx, before: usize) -> Option<String> {
    let deferred = ctx.deferred.as_deref().unwrap_or_default();
    let new: Vec<&str> = deferred.get(before..).unwrap_or_default().iter().map(|d| d.message.as_str()).collect();
    (!new.is_empty()).then(|| new.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_every_problem_with_its_place() {
        let text = "[server]\nlisten = \"localhost\"\n\n\
                    [webhooks.a]\npath = \"hooks/a\"\nentity = \"ticket\"\nauth = { type = \"bearer\", token = \"${TRIPLINE_UNIT_UNSET_VAR}\" }\n\n\
                    [webhooks.b]\npath = \"/metrics\"\nentity = \"ticket\"\nevent = \"Bad Name\"\nauth = { type = \"none\" }\n\n\
                    [webhooks.c]\npath = \"/metrics\"\nentity = \"ticket\"\nauth = { type = \"none\" }\nfields = { X = \"a..b\" }\n";
        let diags = Config::from_str(text, std::path::Path::new("t.toml")).unwrap_err();
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let expect = [
            "t.toml:2:10: [server] listen: \"localhost\" is not an address",
            "t.toml:5:8: [webhooks.a] path must start with `/`",
            "t.toml:7:35: [webhooks.a] auth token: environment variable TRIPLINE_UNIT_UNSET_VAR is not set",
            "t.toml:10:8: [webhooks.b] path \"/metrics\" is the server's own",
            "t.toml:12:9: [webhooks.b] event: \"Bad Name\" is not an event name",
            "t.toml:16:8: [webhooks.c] path \"/metrics\" is already the path of [webhooks.b]",
            "t.toml:19:10: [webhooks.c] fields: X = \"a..b\": not a dotted path",
        ];
        for e in expect {
            assert!(shown.iter().any(|s| s.starts_with(e)), "{e:?} in {shown:#?}");
        }
        let no_server = "[webhooks.a]\npath = \"/a\"\nentity = \"t\"\nauth = { type = \"none\" }\n";
        let diags = Config::from_str(no_server, std::path::Path::new("t.toml")).unwrap_err();
        assert!(diags[0].to_string().contains("needs a [server] section"), "{diags:?}");
    }

    #[test]
    fn tripline_check_reports_each_problem_at_its_place() {
        let text = r#"
[directories.AD]
kind = "active_directory"
url = "ldapx://dc1"
bind_dn = "CN=svc,DC=example,DC=com"
bind_password = "${TRIPLINE_TEST_UNSET_AD_PW}"
base_dn = "DC=example,DC=com"
users_ou = "OU=Staff,DC=elsewhere,DC=com"
"#;
        let diags = Config::from_str(text, Path::new("tripline.toml")).unwrap_err();
        let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("tripline.toml:4:7: directories.AD: url scheme `ldapx`"), "{lines:#?}");
        assert!(lines[1].starts_with("tripline.toml:8:12: directories.AD: users_ou"), "{lines:#?}");
        assert_eq!(
            lines[2],
            "tripline.toml:6:17: directories.AD.bind_password: environment variable TRIPLINE_TEST_UNSET_AD_PW is not set"
        );
        let good = "[directories.AD]\nkind = \"ldap\"\nurl = \"ldap://h\"\nbase_dn = \"dc=x\"\ndry_run = true\n";
        assert!(Config::from_str(good, Path::new("t.toml")).is_ok());
        // Dry run binds nothing: an unset password variable is not an error (yet).
        let dry = text.replace("ldapx://", "ldaps://").replace("DC=elsewhere", "DC=example") + "dry_run = true\n";
        let config = Config::from_str(&dry, Path::new("t.toml")).unwrap();
        assert!(config.directories["AD"].is_dry_run());
    }

    mod fuzz {
        //! Property tests: configuration text, whatever it holds, gives a configuration or
        //! diagnostics, never a panic.
        use super::*;
        use proptest::prelude::*;

        use crate::de::toml_literal;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn any_config_text_is_a_config_or_diagnostics(src in "\\PC{0,300}") {
                let _ = Config::from_str(&src, Path::new("tripline.toml"));
            }

            #[test]
            fn config_sections_with_random_values_never_panic(
                section in "engine|limits|directories.AD|connections.hr|jobs.j|webhooks.w|notify.n|server",
                key in "[a-z_]{1,12}|url|schedule|kind|auth|workers|timeout_ms|base_dn|path",
                value in toml_literal(),
            ) {
                let src = format!("[{section}]\n{key} = {value}\n");
                let _ = Config::from_str(&src, Path::new("tripline.toml"));
            }
        }
    }
}
