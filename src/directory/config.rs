//! `[directories.NAME]` as written in `tripline.toml`, its validation, and the attribute
//! mapping (HR field -> directory attribute) with SPEC.md's defaults.
//!
//! ```toml
//! [directories.ActiveDirectory]
//! kind = "active_directory"            # or "ldap" (OpenLDAP, inetOrgPerson)
//! url = "ldaps://dc1.example.com"      # ldap:// or ldaps://, optional :port
//! starttls = false                     # upgrade an ldap:// connection with StartTLS
//! allow_plaintext_bind = false         # true: bind over plain ldap:// anyway (a lab only)
//! bind_dn = "svc-tripline@example.com" # a DN, or on AD also user@domain / DOMAIN\user
//! bind_password = "${AD_BIND_PASSWORD}"
//! base_dn = "DC=example,DC=com"
//! users_ou = "OU=Staff,DC=example,DC=com"   # where new users go; default CN=Users (AD) or base_dn
//! user_search_bases = ["OU=Staff,DC=example,DC=com", "OU=Contractors,DC=example,DC=com"]
//!                                      # where the Flex HR sync may find accounts; default [users_ou]
//! groups_base = "OU=Groups,DC=example,DC=com" # where groups named without a DN are looked up
//! upn_suffix = "example.com"           # default: the DC= parts of base_dn
//! tls_verify = true                    # false only for a lab
//! ca_file = "certs/ad-ca.pem"          # PEM CA to trust, relative to this file
//! connect_timeout = 10                 # seconds, or a string "500ms" / "10s"
//! op_timeout = "30s"
//! page_size = 500                      # entries per page of a search
//! dry_run = false                      # record the changes instead of connecting
//! mode = "create_and_update"           # or "create_only" / "update_only" (ProcessFlexHrUserOnAD)
//!
//! [directories.ActiveDirectory.mapping] # HR field = attribute; "" drops a default
//! Office = "physicalDeliveryOfficeName"
//! CostCenter = "extensionAttribute1"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::dn::{is_attribute_type, Dn};
use super::schema::{protection, Schema, WriteKind, AD, LDAP};
use crate::secret::SecretRef;

/// `[directories.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `active_directory` or `ldap`.
    pub kind: DirectoryKind,
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: Spanned<String>,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// Bind with the password over a plain `ldap://` connection, where anyone on the path
    /// reads it. Refused unless set (a lab setting, which `check` reports as a warning);
    /// users' passwords are never sent in clear, whatever this says.
    #[serde(default = "default_false")]
    pub allow_plaintext_bind: Spanned<bool>,
    /// The account tripline binds as; anonymous when absent.
    pub bind_dn: Option<Spanned<String>>,
    /// Its password (`${VAR}` or `${file:PATH}` allowed).
    pub bind_password: Option<SecretRef>,
    /// The naming context searched for users and groups.
    pub base_dn: Spanned<String>,
    /// Where new users are created. Default: `CN=Users,<base_dn>` on AD, `base_dn` elsewhere.
    pub users_ou: Option<Spanned<String>>,
    /// Where `ProcessFlexHrUserOnAD` may find and change accounts (`users_ou` and each OU
    /// under it). Default: `[users_ou]`. An account with the employee ID elsewhere under
    /// `base_dn` (a service or admin account) is a conflict, not a match.
    pub user_search_bases: Option<Spanned<Vec<Spanned<String>>>>,
    /// Where groups named without a DN are looked up. Default: `base_dn`.
    pub groups_base: Option<Spanned<String>>,
    /// The part after `@` of new users' `userPrincipalName`. Default: base_dn's `DC=` parts.
    pub upn_suffix: Option<Spanned<String>>,
    /// Verify the server's certificate (default true).
    #[serde(default = "crate::de::default_true")]
    pub tls_verify: bool,
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// How long opening a connection (TCP, TLS, StartTLS) may take. Default 10 s.
    #[serde(default = "Timeout::connect_default")]
    pub connect_timeout: Timeout,
    /// How long one operation may wait for its answer. Default 30 s.
    #[serde(default = "Timeout::op_default")]
    pub op_timeout: Timeout,
    /// Entries per page of a paged search (default 500; AD's MaxPageSize is 1000).
    #[serde(default = "default_page_size")]
    pub page_size: Spanned<u32>,
    /// Record the changes that would be made instead of connecting (see the module docs).
    #[serde(default)]
    pub dry_run: bool,
    /// What `ProcessFlexHrUserOnAD` may do: create and update accounts (default), only
    /// create new ones, or only update existing ones. A call can override it.
    #[serde(default)]
    pub mode: SyncMode,
    /// HR field -> attribute, over the defaults of [`default_mapping`]; `""` drops a field.
    #[serde(default)]
    pub mapping: BTreeMap<String, Spanned<String>>,
}

fn default_false() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

fn default_page_size() -> Spanned<u32> {
    Spanned::new(0..0, 500)
}

/// What a sync may do to the directory (seed 001's "create & update / create only / update
/// only").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Create people who have no account, update those who have one.
    #[default]
    CreateAndUpdate,
    /// Create people who have no account; leave existing accounts as they are.
    CreateOnly,
    /// Update existing accounts; create nobody.
    UpdateOnly,
}

impl SyncMode {
    /// Every mode's name, as written in `mode = "..."`.
    pub const NAMES: [&'static str; 3] = ["create_and_update", "create_only", "update_only"];

    /// A mode by its name, or an error naming the modes (with a suggestion when one is close).
    pub fn parse(text: &str) -> Result<SyncMode, String> {
        match text {
            "create_and_update" => Ok(SyncMode::CreateAndUpdate),
            "create_only" => Ok(SyncMode::CreateOnly),
            "update_only" => Ok(SyncMode::UpdateOnly),
            other => {
                let hint = match crate::diag::did_you_mean(other, Self::NAMES) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => String::new(),
                };
                Err(format!("unknown mode `{other}`: the modes are {}{hint}", Self::NAMES.join(", ")))
            }
        }
    }

    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::CreateAndUpdate => "create_and_update",
            SyncMode::CreateOnly => "create_only",
            SyncMode::UpdateOnly => "update_only",
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of server a directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectoryKind {
    /// Microsoft Active Directory or Samba AD: `user` objects, `sAMAccountName`.
    ActiveDirectory,
    /// OpenLDAP-style servers: `inetOrgPerson`, `uid`.
    Ldap,
}

impl DirectoryKind {
    /// The attribute names of this kind.
    pub fn schema(self) -> &'static Schema {
        match self {
            DirectoryKind::ActiveDirectory => &AD,
            DirectoryKind::Ldap => &LDAP,
        }
    }
}

impl fmt::Display for DirectoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DirectoryKind::ActiveDirectory => "active_directory",
            DirectoryKind::Ldap => "ldap",
        })
    }
}

/// A timeout: a number of seconds (`10`, `0.5`) or a string with a unit (`"500ms"`, `"10s"`,
/// `"2m"`). Zero is refused: a directory call must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Timeout {
    fn connect_default() -> Timeout {
        Timeout(Duration::from_secs(10))
    }
    fn op_default() -> Timeout {
        Timeout(Duration::from_secs(30))
    }

    /// Parses `"500ms"`, `"10s"`, `"2m"` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Timeout, String> {
        let t = text.trim();
        let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
            (n, 0.001)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60.0)
        } else {
            (t, 1.0)
        };
        let n: f64 =
            num.trim().parse().map_err(|_| format!("`{text}` is not a duration like \"500ms\", \"10s\" or \"2m\""))?;
        Self::from_secs(n * scale)
    }

    fn from_secs(secs: f64) -> Result<Timeout, String> {
        if !(secs > 0.0 && secs <= 86_400.0) {
            return Err("a timeout must be more than 0 and at most a day".into());
        }
        Ok(Timeout(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let t = match Raw::deserialize(d)? {
            Raw::Int(n) => Timeout::from_secs(n as f64),
            Raw::Float(n) => Timeout::from_secs(n),
            Raw::Text(s) => Timeout::parse(&s),
        };
        t.map_err(serde::de::Error::custom)
    }
}

/// HR fields the sync reads itself; they cannot be mapped to attributes.
pub const SYNC_FIELDS: &[&str] = &["Username", "ManagerEmployeeId", "Active", "IsNewUser"];

/// SPEC.md's default mapping (HR field -> attribute) for a kind of directory. `displayName`
/// and `cn` come from the names, `sAMAccountName`/`uid` from Username, `manager` from
/// ManagerEmployeeId; they are not in this table.
pub fn default_mapping(kind: DirectoryKind) -> Vec<(&'static str, &'static str)> {
    let common = [
        ("EmployeeId", kind.schema().employee_id),
        ("FirstName", "givenName"),
        ("LastName", "sn"),
        ("Email", "mail"),
        ("JobTitle", "title"),
        ("Phone", "telephoneNumber"),
        ("Office", "physicalDeliveryOfficeName"),
    ];
    let specific = match kind {
        DirectoryKind::ActiveDirectory => [("Department", "department"), ("Company", "company")],
        DirectoryKind::Ldap => [("Department", "departmentNumber"), ("Company", "o")],
    };
    common.into_iter().chain(specific).collect()
}

/// A problem found in a section, with the place it points at (`None`: the whole section).
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub span: Option<Range<usize>>,
    pub message: String,
    /// A warning: the section is usable (see [`crate::diag::Severity::Warning`]).
    pub warning: bool,
}

/// The validated, defaulted view of a [`DirectoryConfig`] that the runtime is built from.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub base_dn: Dn,
    pub users_ou: Dn,
    pub user_search_bases: Vec<Dn>,
    pub groups_base: Dn,
    pub upn_suffix: String,
    pub mapping: Vec<(String, String)>,
    pub ca_file: Option<PathBuf>,
}

impl DirectoryConfig {
    /// Validates and fills in defaults: the core of [`DirectoryConfig::build`], which reports
    /// the problems and builds the directory.
    pub(crate) fn resolve(&self, name: &str, base_dir: &Path) -> (Option<Resolved>, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut problem = |span: Option<Range<usize>>, message: String| {
            problems.push(Problem { span, message: format!("directories.{name}: {message}"), warning: false })
        };
        let mut warning = |span: Range<usize>, message: String| {
            warnings.push(Problem {
                span: Some(span),
                message: format!("directories.{name}: {message}"),
                warning: true,
            })
        };

        match url::Url::parse(self.url.get_ref()) {
            Ok(u) if !matches!(u.scheme(), "ldap" | "ldaps") => problem(
                Some(self.url.span()),
                format!("url scheme `{}` is not supported: use ldap:// or ldaps://", u.scheme()),
            ),
            Ok(u) if u.host_str().unwrap_or("").is_empty() => {
                problem(Some(self.url.span()), "url has no host (ldap://host[:port])".into())
            }
            Ok(u) if u.scheme() == "ldaps" && self.starttls => problem(
                Some(self.url.span()),
                "starttls = true needs an ldap:// url; ldaps:// is already encrypted".into(),
            ),
            Ok(u) if (u.path() != "" && u.path() != "/") || u.query().is_some() => problem(
                Some(self.url.span()),
                "url must be only ldap[s]://host[:port]; set base_dn for the naming context".into(),
            ),
            Ok(_) => {}
            Err(e) => problem(Some(self.url.span()), format!("url `{}` does not parse: {e}", self.url.get_ref())),
        }
        self.check_plaintext_bind(&mut problem, &mut warning);

        match (&self.bind_dn, &self.bind_password) {
            (Some(dn), None) => problem(Some(dn.span()), "bind_dn is set but bind_password is not".into()),
            (None, Some(pw)) => problem(Some(pw.span()), "bind_password is set but bind_dn is not".into()),
            _ => {}
        }
        if let Some(bind_dn) = &self.bind_dn {
            let text = bind_dn.get_ref();
            let ad_name = self.kind == DirectoryKind::ActiveDirectory && (text.contains('@') || text.contains('\\'));
            if !ad_name {
                if let Err(e) = Dn::parse(text) {
                    let hint = match self.kind {
                        DirectoryKind::ActiveDirectory => " (or user@domain, DOMAIN\\user)",
                        DirectoryKind::Ldap => "",
                    };
                    problem(Some(bind_dn.span()), format!("bind_dn: {e}{hint}"));
                }
            }
        }

        let base_dn = match Dn::parse(self.base_dn.get_ref()) {
            Ok(dn) => Some(dn),
            Err(e) => {
                problem(Some(self.base_dn.span()), format!("base_dn: {e}"));
                None
            }
        };
        let mut under_base = |key: &str, value: &Option<Spanned<String>>, default: Option<Dn>| -> Option<Dn> {
            let Some(v) = value else { return default };
            match Dn::parse(v.get_ref()) {
                Ok(dn) => {
                    if let Some(base) = &base_dn {
                        if !dn.is_within(base) {
                            problem(Some(v.span()), format!("{key} `{dn}` is outside base_dn `{base}`"));
                        }
                    }
                    Some(dn)
                }
                Err(e) => {
                    problem(Some(v.span()), format!("{key}: {e}"));
                    None
                }
            }
        };
        let default_users = base_dn.as_ref().map(|b| match self.kind {
            DirectoryKind::ActiveDirectory => b.child("CN", "Users"),
            DirectoryKind::Ldap => b.clone(),
        });
        let users_ou = under_base("users_ou", &self.users_ou, default_users);
        let groups_base = under_base("groups_base", &self.groups_base, base_dn.clone());
        let user_search_bases: Option<Vec<Dn>> = match &self.user_search_bases {
            None => users_ou.clone().map(|ou| vec![ou]),
            Some(list) if list.get_ref().is_empty() => {
                problem(Some(list.span()), "user_search_bases is empty: list users_ou at least".into());
                None
            }
            Some(list) => {
                let bases: Vec<Option<Dn>> =
                    list.get_ref().iter().map(|b| under_base("user_search_bases", &Some(b.clone()), None)).collect();
                bases.into_iter().collect()
            }
        };
        if let (Some(ou), Some(bases), Some(list)) = (&users_ou, &user_search_bases, &self.user_search_bases) {
            if !bases.iter().any(|b| ou.is_within(b)) {
                // The sync creates people in users_ou: outside the bases, it would not find
                // them again and would create them twice.
                problem(
                    Some(list.span()),
                    format!("user_search_bases must include users_ou `{ou}` (or an OU above it)"),
                );
            }
        }

        let upn_suffix = match &self.upn_suffix {
            Some(s) => {
                let v = s.get_ref().trim().trim_start_matches('@');
                if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '@' || c == ',' || c == '=') {
                    problem(
                        Some(s.span()),
                        format!("upn_suffix `{}` is not a domain name like example.com", s.get_ref()),
                    );
                }
                Some(v.to_string())
            }
            None => {
                let derived = base_dn.as_ref().and_then(Dn::dns_domain);
                if derived.is_none() && base_dn.is_some() && self.kind == DirectoryKind::ActiveDirectory {
                    problem(
                        Some(self.base_dn.span()),
                        "base_dn has no DC= parts to derive upn_suffix from: set upn_suffix".into(),
                    );
                }
                derived
            }
        };

        let ca_file = self.ca_file.as_ref().map(|f| {
            let path = base_dir.join(f.get_ref());
            if let Err(e) = std::fs::metadata(&path) {
                problem(Some(f.span()), format!("ca_file {} cannot be read: {e}", path.display()));
            }
            path
        });

        let page_size = *self.page_size.get_ref();
        if !(1..=100_000).contains(&page_size) {
            problem(Some(self.page_size.span()), "page_size must be between 1 and 100000".into());
        }

        let mut mapping: Vec<(String, String)> =
            default_mapping(self.kind).into_iter().map(|(f, a)| (f.to_string(), a.to_string())).collect();
        for (field, attr) in &self.mapping {
            let a = attr.get_ref().trim();
            if SYNC_FIELDS.iter().any(|s| s.eq_ignore_ascii_case(field)) {
                problem(
                    Some(attr.span()),
                    format!("mapping: field {field} is handled by the sync itself and cannot be mapped"),
                );
                continue;
            }
            if field.trim().is_empty() {
                problem(Some(attr.span()), "mapping: a field name is empty".into());
                continue;
            }
            // The sync writes mapped attributes on every update, so the update rules apply.
            if let Some(refusal) = (!a.is_empty()).then(|| protection(a, WriteKind::Update)).flatten() {
                problem(Some(attr.span()), format!("mapping: attribute {a} cannot be mapped: {}", refusal.instead));
                continue;
            }
            if !a.is_empty() && !is_attribute_type(a) {
                problem(Some(attr.span()), format!("mapping: `{a}` is not an attribute name"));
                continue;
            }
            if field == "EmployeeId" && a.is_empty() {
                problem(Some(attr.span()), "mapping: EmployeeId is the sync key and needs an attribute".into());
                continue;
            }
            mapping.retain(|(f, _)| f != field);
            if !a.is_empty() {
                mapping.push((field.clone(), a.to_string()));
            }
        }

        let resolved = match (base_dn, users_ou, user_search_bases, groups_base) {
            (Some(base_dn), Some(users_ou), Some(user_search_bases), Some(groups_base)) if problems.is_empty() => {
                Some(Resolved {
                    base_dn,
                    users_ou,
                    user_search_bases,
                    groups_base,
                    upn_suffix: upn_suffix.unwrap_or_default(),
                    mapping,
                    ca_file,
                })
            }
            _ => None,
        };
        problems.extend(warnings);
        (resolved, problems)
    }

    /// Whether the connection is plain `ldap://` without StartTLS: what it carries can be read
    /// on the way. (Another scheme is a problem of its own and builds nothing.)
    pub(crate) fn is_plaintext(&self) -> bool {
        !self.starttls && self.url.get_ref().trim_start().to_ascii_lowercase().starts_with("ldap://")
    }

    /// The service account's password must not cross the network in clear: a bind over plain
    /// `ldap://` is an error, unless `allow_plaintext_bind = true` says the admin accepts it
    /// (then a warning). A dry-run directory never binds, so it may keep a plain URL, but is
    /// warned about: setting `dry_run = false` would send the password in clear.
    fn check_plaintext_bind(
        &self,
        problem: &mut impl FnMut(Option<Range<usize>>, String),
        warning: &mut impl FnMut(Range<usize>, String),
    ) {
        let allowed = *self.allow_plaintext_bind.get_ref();
        let allow_span = self.allow_plaintext_bind.span();
        let url = self.url.get_ref();
        let binds = self.bind_password.is_some();
        match (self.is_plaintext() && binds, allowed) {
            (true, true) => warning(
                allow_span,
                format!(
                    "allow_plaintext_bind = true: the bind password is sent in clear over {url}, readable by anyone \
                     on the network path; use an ldaps:// url or starttls = true outside a lab"
                ),
            ),
            (true, false) if self.dry_run => warning(
                self.url.span(),
                format!(
                    "url {url} is not encrypted: a dry run binds nothing, but with dry_run = false the bind password \
                     would be sent in clear; use an ldaps:// url or starttls = true"
                ),
            ),
            (true, false) => problem(
                Some(self.url.span()),
                format!(
                    "the bind password would be sent in clear over {url}: use an ldaps:// url or starttls = true \
                     (allow_plaintext_bind = true accepts it, for a lab only)"
                ),
            ),
            (false, true) => {
                let why = if binds { "the connection is encrypted" } else { "there is no bind_password" };
                warning(allow_span, format!("allow_plaintext_bind = true has no effect: {why}"))
            }
            (false, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DirectoryConfig {
        toml::from_str(text).unwrap()
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text).resolve("AD", Path::new(".")).1.into_iter().map(|p| p.message).collect()
    }

    const GOOD: &str = r#"
kind = "active_directory"
url = "ldaps://dc1.example.com"
bind_dn = "svc@example.com"
bind_password = "${AD_PW}"
base_dn = "DC=example,DC=com"
users_ou = "OU=Staff,DC=example,DC=com"
"#;

    #[test]
    fn a_good_section_resolves_with_defaults() {
        let cfg = parse(GOOD);
        let (r, p) = cfg.resolve("AD", Path::new("."));
        assert!(p.is_empty(), "{p:?}");
        let r = r.unwrap();
        assert_eq!(r.upn_suffix, "example.com");
        assert_eq!(r.groups_base.to_string(), "DC=example,DC=com");
        assert!(r.mapping.contains(&("EmployeeId".into(), "employeeID".into())));
        assert!(r.mapping.contains(&("Office".into(), "physicalDeliveryOfficeName".into())));
        assert!(cfg.tls_verify && !cfg.dry_run && !cfg.starttls);
        assert_eq!(cfg.op_timeout.0, Duration::from_secs(30));
    }

    #[test]
    fn every_problem_is_reported() {
        let p = problems(
            r#"
kind = "active_directory"
url = "http://dc1"
bind_dn = "not a dn"
base_dn = "DC=example,DC=com"
users_ou = "OU=Staff,DC=other,DC=com"
groups_base = "OU=Groups;;"
"#,
        );
        let all = p.join("\n");
        assert!(all.contains("url scheme `http`"), "{all}");
        assert!(all.contains("bind_dn is set but bind_password is not"), "{all}");
        assert!(all.contains("bind_dn: `not a dn` is not a distinguished name"), "{all}");
        assert!(all.contains("users_ou `OU=Staff,DC=other,DC=com` is outside base_dn"), "{all}");
        assert!(all.contains("groups_base:"), "{all}");
        assert_eq!(p.len(), 5, "{all}");
    }

    #[test]
    fn starttls_with_ldaps_and_bad_mapping() {
        let p = problems(&format!(
            "{GOOD}starttls = true\n[mapping]\nUsername = \"uid\"\nNick = \"sAMAccountName\"\nX = \"bad attr\"\nPhone = \"\"\n"
        ));
        let all = p.join("\n");
        assert!(all.contains("starttls = true needs an ldap:// url"), "{all}");
        assert!(all.contains("field Username is handled by the sync"), "{all}");
        assert!(all.contains("attribute sAMAccountName cannot be mapped: a logon name is set when"), "{all}");
        assert!(all.contains("`bad attr` is not an attribute name"), "{all}");
        assert_eq!(p.len(), 4, "{all}");
    }

    #[test]
    fn mapping_overrides_and_drops_defaults() {
        let cfg = parse(&format!("{GOOD}[mapping]\nPhone = \"\"\nCostCenter = \"extensionAttribute1\"\n"));
        let r = cfg.resolve("AD", Path::new(".")).0.unwrap();
        assert!(!r.mapping.iter().any(|(f, _)| f == "Phone"));
        assert!(r.mapping.contains(&("CostCenter".into(), "extensionAttribute1".into())));
    }

    #[test]
    fn timeouts_take_numbers_and_units() {
        assert_eq!(Timeout::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Timeout::parse("10s").unwrap().0, Duration::from_secs(10));
        assert_eq!(Timeout::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Timeout::parse("0").is_err() && Timeout::parse("soon").is_err());
        let cfg = parse(&format!("{GOOD}connect_timeout = 2\nop_timeout = 0.25\n"));
        assert_eq!(cfg.connect_timeout.0, Duration::from_secs(2));
        assert_eq!(cfg.op_timeout.0, Duration::from_millis(250));
        let err = toml::from_str::<DirectoryConfig>(&format!("{GOOD}op_timeout = \"forever\"\n")).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        assert!(toml::from_str::<DirectoryConfig>(&format!("{GOOD}colour = 1\n")).is_err());
    }

    /// `[directories.AD]` of a whole file, built as the configuration builds it: the
    /// directory, and `(line:col, warning?, message)` of each problem `check` reports.
    fn build_file(text: &str) -> (Option<crate::directory::Directory>, Vec<(String, bool, String)>) {
        #[derive(Deserialize)]
        struct File {
            directories: BTreeMap<String, Spanned<DirectoryConfig>>,
        }
        let file: File = toml::from_str(text).unwrap();
        let mut ctx = crate::diag::CheckCtx::new(Path::new("t.toml"), text, Path::new("."));
        let section = &file.directories["AD"];
        let built = section.get_ref().build("AD", section.span(), &mut ctx);
        let problems = ctx.diags.into_iter().map(|d| (format!("{}:{}", d.line, d.col), !d.is_error(), d.message));
        (built, problems.collect())
    }

    /// `(line:col, warning?, message)` of each problem `check` reports for a whole file.
    fn check_file(text: &str) -> Vec<(String, bool, String)> {
        build_file(text).1
    }

    const PLAIN: &str = "[directories.AD]\nkind = \"active_directory\"\nurl = \"ldap://dc1.example.com\"\n\
                         bind_dn = \"svc@example.com\"\nbind_password = \"pw\"\nbase_dn = \"DC=example,DC=com\"\n";

    #[test]
    fn a_bind_over_plain_ldap_is_refused_unless_allowed() {
        let refused = check_file(PLAIN);
        assert_eq!(refused.len(), 1, "{refused:?}");
        let (at, warning, message) = &refused[0];
        assert_eq!((at.as_str(), *warning), ("3:7", false), "{refused:?}");
        assert!(
            message.starts_with("directories.AD: the bind password would be sent in clear over ldap://dc1"),
            "{message}"
        );
        assert!(message.contains("ldaps://") && message.contains("starttls = true"), "{message}");
        assert!(message.contains("allow_plaintext_bind = true"), "{message}");
        // Refused at start too, whatever the caller.
        let section: DirectoryConfig = toml::from_str(PLAIN.trim_start_matches("[directories.AD]\n")).unwrap();
        let err = crate::directory::Directory::new("AD", &section).err().expect("refused");
        assert!(err.to_string().contains("would be sent in clear"), "{err}");
        // Upper-case schemes are the same scheme.
        assert_eq!(check_file(&PLAIN.replace("ldap://", "LDAP://")).len(), 1);

        let allowed = check_file(&format!("{PLAIN}allow_plaintext_bind = true\n"));
        assert_eq!(allowed.len(), 1, "{allowed:?}");
        let (at, warning, message) = &allowed[0];
        assert_eq!((at.as_str(), *warning), ("7:24", true), "{allowed:?}");
        assert!(message.contains("sent in clear over ldap://dc1.example.com"), "{message}");
        let text = format!("{PLAIN}allow_plaintext_bind = true\n");
        let (built, problems) = build_file(&text);
        assert_eq!(problems.iter().filter(|(_, warning, _)| *warning).count(), 1);
        assert!(built.is_some() && problems.len() == 1, "{problems:?}");
    }

    #[test]
    fn encrypted_binds_and_dry_runs() {
        for ok in ["url = \"ldaps://dc1.example.com\"", "url = \"ldap://dc1.example.com\"\nstarttls = true"] {
            let text = PLAIN.replace("url = \"ldap://dc1.example.com\"", ok);
            assert!(check_file(&text).is_empty(), "{ok}: {:?}", check_file(&text));
        }
        // No password, nothing to protect.
        let anonymous = "[directories.AD]\nkind = \"ldap\"\nurl = \"ldap://h\"\nbase_dn = \"dc=x\"\n";
        assert!(check_file(anonymous).is_empty());
        // A dry run binds nothing, so it is allowed; going live would not be.
        let dry = check_file(&format!("{PLAIN}dry_run = true\n"));
        assert_eq!(dry.len(), 1, "{dry:?}");
        assert_eq!((dry[0].0.as_str(), dry[0].1), ("3:7", true), "{dry:?}");
        assert!(dry[0].2.contains("with dry_run = false the bind password would be sent in clear"), "{dry:?}");
        // The opt-in where it changes nothing says so.
        let idle = check_file(&format!("{}allow_plaintext_bind = true\n", PLAIN.replace("ldap://", "ldaps://")));
        assert_eq!(idle.len(), 1, "{idle:?}");
        assert!(idle[0].1 && idle[0].2.contains("has no effect: the connection is encrypted"), "{idle:?}");
    }

    #[test]
    fn a_mapping_to_a_protected_attribute_is_an_error_at_its_place() {
        let text = "[directories.AD]\nkind = \"active_directory\"\nurl = \"ldaps://dc1.example.com\"\n\
                    base_dn = \"DC=example,DC=com\"\n[directories.AD.mapping]\nTitle = \"title\"\n\
                    Flags = \"userAccountControl;binary\"\nKeys = \"msDS-KeyCredentialLink\"\n\
                    Boss = \"MANAGER\"\nUpn = \"userPrincipalName\"\nSid = \"1.2.840.113556.1.4.609\"\n";
        let problems = check_file(text);
        let got: Vec<(&str, &str)> = problems.iter().map(|(at, _, m)| (at.as_str(), m.as_str())).collect();
        assert_eq!(got.len(), 5, "{got:#?}");
        let expect = [
            ("7:9", "attribute userAccountControl;binary cannot be mapped: use enable_user / disable_user"),
            ("8:8", "attribute msDS-KeyCredentialLink cannot be mapped: it grants access"),
            ("9:8", "attribute MANAGER cannot be mapped: use set_manager"),
            ("10:7", "attribute userPrincipalName cannot be mapped: a logon name is set"),
            ("11:7", "attribute 1.2.840.113556.1.4.609 cannot be mapped: it grants access"),
        ];
        // The mapping is a BTreeMap: problems come in the order of the field names.
        for (at, text) in expect {
            assert!(got.iter().any(|(a, m)| *a == at && m.contains(text)), "{at} {text}: {got:#?}");
        }
        assert!(problems.iter().all(|(_, warning, _)| !warning));
    }

    #[test]
    fn user_search_bases_default_to_users_ou_and_must_hold_it() {
        let r = parse(GOOD).resolve("AD", Path::new(".")).0.unwrap();
        assert_eq!(r.user_search_bases, vec![Dn::parse("OU=Staff,DC=example,DC=com").unwrap()]);
        let two =
            format!("{GOOD}user_search_bases = [\"OU=Staff,DC=example,DC=com\", \"OU=Temps,DC=example,DC=com\"]\n");
        assert_eq!(parse(&two).resolve("AD", Path::new(".")).0.unwrap().user_search_bases.len(), 2);
        let above = format!("{GOOD}user_search_bases = [\"DC=example,DC=com\"]\n");
        assert!(problems(&above).is_empty(), "{:?}", problems(&above));

        let text = "[directories.AD]\nkind = \"ldap\"\nurl = \"ldaps://h\"\nbase_dn = \"dc=x\"\n\
                    users_ou = \"ou=people,dc=x\"\nuser_search_bases = [\"ou=temps,dc=x\", \"ou=y,dc=other\", \"bad\"]\n";
        let got = check_file(text);
        let all: Vec<String> = got.iter().map(|(at, _, m)| format!("{at} {m}")).collect();
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(
            all[0].starts_with("6:39 directories.AD: user_search_bases `ou=y,dc=other` is outside base_dn"),
            "{all:#?}"
        );
        assert!(all[1].starts_with("6:56 directories.AD: user_search_bases: `bad`"), "{all:#?}");
        let missing = text.replace(", \"ou=y,dc=other\", \"bad\"", "");
        let got = check_file(&missing);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0].0, "6:21");
        assert!(got[0].2.contains("user_search_bases must include users_ou `ou=people,dc=x`"), "{got:#?}");
        let empty = check_file(&text.replace("[\"ou=temps,dc=x\", \"ou=y,dc=other\", \"bad\"]", "[]"));
        assert!(empty[0].2.contains("user_search_bases is empty"), "{empty:#?}");
    }

    #[test]
    fn ldap_kind_defaults() {
        let cfg = parse(
            r#"
kind = "ldap"
url = "ldap://127.0.0.1:3890"
base_dn = "dc=example,dc=com"
"#,
        );
        let r = cfg.resolve("ol", Path::new(".")).0.unwrap();
        assert_eq!(r.users_ou.to_string(), "dc=example,dc=com");
        assert!(r.mapping.contains(&("EmployeeId".into(), "employeeNumber".into())));
        assert!(r.mapping.contains(&("Company".into(), "o".into())));
    }
}
