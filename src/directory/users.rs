//! User operations: find, create, update, enable/disable, delete, move, rename, passwords,
//! manager. Each works on Active Directory and on OpenLDAP's inetOrgPerson except where the
//! method says otherwise; in dry-run mode each write is recorded instead of sent.

use std::collections::{BTreeMap, HashSet};

use ldap3::exop::PasswordModify;
use ldap3::Mod;

use super::ad;
use super::audit::{attr, report, Change};
use super::config::DirectoryKind;
use super::dn::{is_attribute_type, Dn};
use super::error::DirectoryError;
use super::handle::{describe_attrs, Directory, Entry};
use super::ident::UserId;
use super::schema::{protection, WriteKind};
use crate::secret::Secret;

/// A user account to create.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// The entry's name: its `CN` (`Zoë O'Brien`), escaped by the host.
    pub name: String,
    /// The logon name: `sAMAccountName` on AD (at most 20 characters), `uid` on OpenLDAP.
    pub login: String,
    /// The OU (DN) to create it in; default the directory's `users_ou`.
    pub ou: Option<String>,
    /// Further attributes (`givenName`, `sn`, `mail`, `employeeID`, ...). Empty values are
    /// left out. On AD `userPrincipalName` defaults to `login@upn_suffix`.
    pub attributes: BTreeMap<String, Vec<String>>,
    /// An initial password (sent only over LDAPS or StartTLS).
    pub password: Option<Secret>,
    /// Whether the account can log on. Default: enabled when a password is given. AD only
    /// enables accounts that have a password.
    pub enabled: Option<bool>,
}

/// Characters AD refuses in `sAMAccountName`.
pub(crate) const SAM_FORBIDDEN: &[char] =
    &['"', '/', '\\', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>', '@'];

fn vals(values: &[String]) -> HashSet<Vec<u8>> {
    values.iter().map(|v| v.as_bytes().to_vec()).collect()
}

fn clean(values: &[String]) -> Vec<String> {
    values.iter().filter(|v| !v.trim().is_empty()).cloned().collect()
}

fn invalid(msg: String) -> DirectoryError {
    DirectoryError::InvalidInput(msg)
}

fn parse_dn(what: &str, text: &str) -> Result<Dn, DirectoryError> {
    Dn::parse(text).map_err(|e| invalid(format!("{what}: {e}")))
}

impl Directory {
    /// The user `id` names with all its attributes, or `None`. More than one match is an
    /// error ([`DirectoryError::Ambiguous`]).
    pub async fn find_user(&self, id: &UserId) -> Result<Option<Entry>, DirectoryError> {
        self.lookup(id, &[]).await
    }

    /// Whether the user exists.
    pub async fn user_exists(&self, id: &UserId) -> Result<bool, DirectoryError> {
        Ok(self.lookup(id, &["1.1"]).await?.is_some())
    }

    /// Checks a logon name for this kind of directory.
    pub(crate) fn check_login(&self, login: &str) -> Result<(), DirectoryError> {
        let n = login.chars().count();
        if n == 0 {
            return Err(invalid("the logon name is empty".into()));
        }
        if n > self.schema.login_max {
            return Err(invalid(format!(
                "the logon name `{login}` has {n} characters; {} allows at most {}",
                self.schema.login, self.schema.login_max
            )));
        }
        if login.chars().any(char::is_control)
            || (self.kind == DirectoryKind::ActiveDirectory && (login.contains(SAM_FORBIDDEN) || login.ends_with('.')))
        {
            return Err(invalid(format!(
                "the logon name `{login}` has characters {} does not allow (\" / \\ [ ] : ; | = , + * ? < > @, or a final .)",
                self.schema.login
            )));
        }
        Ok(())
    }

    /// Refuses, before anything is sent, an attribute map that names what it must not
    /// write (see [`protection`]): every spelling of a protected attribute, and anything that
    /// is not a plain attribute name (options such as `;binary` included).
    fn check_attr_names<'a>(
        &self,
        operation: &str,
        kind: WriteKind,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), DirectoryError> {
        for a in names {
            if let Some(refusal) = protection(a, kind) {
                let named = match refusal.attribute {
                    "" => format!("attribute {a}"),
                    usual if usual == a => format!("attribute {a}"),
                    usual => format!("attribute {a} ({usual})"),
                };
                return Err(invalid(format!("{operation} cannot write {named}: {}", refusal.instead)));
            }
            if !is_attribute_type(a) {
                return Err(invalid(format!(
                    "`{a}` is not an attribute name (options such as ;lang-x are not written)"
                )));
            }
        }
        Ok(())
    }

    /// Creates a user in `user.ou` (default `users_ou`) and returns it as sent (without the
    /// password). Fails with [`DirectoryError::AlreadyExists`] when the DN or the logon name
    /// is taken.
    pub async fn create_user(&self, user: &NewUser) -> Result<Entry, DirectoryError> {
        let name = user.name.trim();
        if name.is_empty() {
            return Err(invalid("a new user needs a name (its CN)".into()));
        }
        if name.chars().count() > 64 {
            return Err(invalid(format!("the name `{name}` is longer than the 64 characters a CN may have")));
        }
        self.check_login(&user.login)?;
        self.check_attr_names("create_user", WriteKind::Create, user.attributes.keys())?;
        let ou = match &user.ou {
            Some(ou) => parse_dn("ou", ou)?,
            None => self.users_ou.clone(),
        };
        let is_ad = self.kind == DirectoryKind::ActiveDirectory;
        let enabled = user.enabled.unwrap_or(user.password.is_some());
        if enabled && user.password.is_none() && is_ad {
            return Err(invalid(
                "Active Directory enables an account only with a password: give one, or enabled = false".into(),
            ));
        }
        if !is_ad && user.enabled == Some(false) {
            return Err(DirectoryError::Unsupported(
                "disabled accounts need Active Directory's userAccountControl; inetOrgPerson has no such flag".into(),
            ));
        }
        if user.password.is_some() {
            self.require_secure()?;
        }
        let dn = ou.child(self.schema.rdn, name).to_string();

        let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &user.attributes {
            let v = clean(v);
            if !v.is_empty() {
                attrs.insert(k.clone(), v);
            }
        }
        attrs.insert("objectClass".into(), self.schema.user_classes.iter().map(|s| s.to_string()).collect());
        attrs.insert(self.schema.login.into(), vec![user.login.clone()]);
        if is_ad {
            if let Some(upn) = self.schema.upn {
                if !attrs.keys().any(|k| k.eq_ignore_ascii_case(upn)) {
                    attrs.insert(upn.into(), vec![format!("{}@{}", user.login, self.upn_suffix)]);
                }
            }
            let uac = if enabled { ad::NORMAL_ACCOUNT } else { ad::NORMAL_ACCOUNT | ad::ACCOUNTDISABLE };
            attrs.insert("userAccountControl".into(), vec![uac.to_string()]);
        } else {
            attrs.insert("cn".into(), vec![name.to_string()]);
            if !attrs.keys().any(|k| k.eq_ignore_ascii_case("sn")) {
                attrs.insert("sn".into(), vec![name.to_string()]);
            }
        }

        // Described only in dry-run mode: on the hot path of bulk creation, the text would be
        // built for nothing.
        if self.is_dry_run() {
            let pw_note = if user.password.is_some() { " and an initial password" } else { "" };
            let description = format!("would create {dn} with attributes {}{pw_note}", describe_attrs(&attrs));
            self.plan("create_user", &dn, attrs.clone(), description);
            return Ok(Entry { dn, attributes: attrs });
        }

        let mut wire: Vec<(Vec<u8>, HashSet<Vec<u8>>)> =
            attrs.iter().map(|(k, v)| (k.as_bytes().to_vec(), vals(v))).collect();
        if let (true, Some(pw)) = (is_ad, &user.password) {
            wire.push((b"unicodePwd".to_vec(), HashSet::from([ad::unicode_pwd(pw.expose())])));
        }
        let add_dn = dn.as_str();
        self.run(|| format!("create {dn}"), |mut l| async move { l.add(add_dn, wire).await?.success() }).await?;
        tracing::info!(directory = %self.name, %dn, "Created user.");
        let created = attrs.iter().map(|(k, v)| attr(k, &[], v)).collect();
        let change = Change::made(&self.name, &dn, "create_user", created);
        report(match (is_ad, &user.password) {
            (true, Some(_)) => change.detail("created with an initial password"),
            _ => change,
        });
        if let (false, Some(pw)) = (is_ad, &user.password) {
            self.set_ldap_password(&dn, pw).await?;
            report(Change::made(&self.name, &dn, "reset_password", Vec::new()).detail("initial password set"));
        }
        Ok(Entry { dn, attributes: attrs })
    }

    /// Sets attributes of a user to the given values (an empty list clears one) and returns
    /// the names of those that really changed; unchanged values are not sent.
    pub async fn update_user(
        &self,
        id: &UserId,
        changes: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<String>, DirectoryError> {
        self.check_attr_names("update_user", WriteKind::Update, changes.keys())?;
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let target = Self::dry_target(id);
        let shown: BTreeMap<String, Vec<String>> = changes.iter().map(|(k, v)| (k.clone(), clean(v))).collect();
        let description = format!("would set on {target}: {}", describe_attrs(&shown));
        if self.plan("update_user", &target, shown, description).is_some() {
            return Ok(changes.keys().cloned().collect());
        }
        let names: Vec<&str> = changes.keys().map(String::as_str).collect();
        let entry = self.locate(id, &names).await?;
        self.apply_changes(&entry, changes, "update_user").await
    }

    /// Sends the differences between `entry` and `changes`; returns the changed names. The
    /// change is audited as `operation`.
    pub(crate) async fn apply_changes(
        &self,
        entry: &Entry,
        changes: &BTreeMap<String, Vec<String>>,
        operation: &str,
    ) -> Result<Vec<String>, DirectoryError> {
        let mut mods: Vec<Mod<Vec<u8>>> = Vec::new();
        let mut changed = Vec::new();
        let mut audited = Vec::new();
        for (attr, wanted) in changes {
            let wanted = clean(wanted);
            let mut have: Vec<&String> = entry.values(attr).iter().collect();
            let mut want: Vec<&String> = wanted.iter().collect();
            have.sort();
            want.sort();
            if have == want {
                continue;
            }
            changed.push(attr.clone());
            audited.push(super::audit::attr(attr, entry.values(attr), &wanted));
            if wanted.is_empty() {
                mods.push(Mod::Delete(attr.as_bytes().to_vec(), HashSet::new()));
            } else {
                mods.push(Mod::Replace(attr.as_bytes().to_vec(), vals(&wanted)));
            }
        }
        if mods.is_empty() {
            return Ok(changed);
        }
        let dn = entry.dn.as_str();
        self.run(|| format!("update {dn}"), |mut l| async move { l.modify(dn, mods).await?.success() }).await?;
        tracing::info!(directory = %self.name, dn = %entry.dn, ?changed, "Updated user.");
        report(Change::made(&self.name, &entry.dn, operation, audited));
        Ok(changed)
    }

    /// Disables the account: sets only the ACCOUNTDISABLE bit of `userAccountControl`, every
    /// other flag kept. Returns whether anything changed. Active Directory only.
    pub async fn disable_user(&self, id: &UserId) -> Result<bool, DirectoryError> {
        self.set_disabled(id, true).await
    }

    /// Enables the account: clears only the ACCOUNTDISABLE bit. Returns whether anything
    /// changed. AD refuses to enable an account without a password. Active Directory only.
    pub async fn enable_user(&self, id: &UserId) -> Result<bool, DirectoryError> {
        self.set_disabled(id, false).await
    }

    async fn set_disabled(&self, id: &UserId, disabled: bool) -> Result<bool, DirectoryError> {
        let verb = if disabled { "disable" } else { "enable" };
        if self.kind != DirectoryKind::ActiveDirectory {
            return Err(DirectoryError::Unsupported(format!(
                "{verb}_user needs Active Directory's userAccountControl; inetOrgPerson has no account flag"
            )));
        }
        let target = Self::dry_target(id);
        let description = format!("would {verb} {target} (ACCOUNTDISABLE bit of userAccountControl)");
        if self.plan(&format!("{verb}_user"), &target, BTreeMap::new(), description).is_some() {
            return Ok(true);
        }
        let entry = self.locate(id, &["userAccountControl"]).await?;
        self.apply_disabled(&entry, disabled).await
    }

    /// Flips the ACCOUNTDISABLE bit of an entry read with `userAccountControl`.
    pub(crate) async fn apply_disabled(&self, entry: &Entry, disabled: bool) -> Result<bool, DirectoryError> {
        let uac: u32 = entry
            .get("userAccountControl")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid(format!("{} has no userAccountControl", entry.dn)))?;
        let new = ad::with_disabled(uac, disabled);
        if new == uac {
            return Ok(false);
        }
        let verb = if disabled { "disable" } else { "enable" };
        let dn = entry.dn.as_str();
        let mods =
            vec![Mod::Replace("userAccountControl".as_bytes().to_vec(), HashSet::from([new.to_string().into_bytes()]))];
        self.run(|| format!("{verb} {dn}"), |mut l| async move { l.modify(dn, mods).await?.success() }).await?;
        tracing::info!(directory = %self.name, dn = %entry.dn, disabled, "Changed account state.");
        let uac = attr("userAccountControl", &[uac.to_string()], &[new.to_string()]);
        report(Change::made(&self.name, &entry.dn, &format!("{verb}_user"), vec![uac]));
        Ok(true)
    }

    /// Deletes the user (only a user: a DN naming an OU or a group is refused).
    pub async fn delete_user(&self, id: &UserId) -> Result<(), DirectoryError> {
        let target = Self::dry_target(id);
        if self.plan("delete_user", &target, BTreeMap::new(), format!("would delete {target}")).is_some() {
            return Ok(());
        }
        let entry = self.locate(id, &["1.1"]).await?;
        let dn = entry.dn.clone();
        self.run(|| format!("delete {}", entry.dn), |mut l| async move { l.delete(&dn).await?.success() }).await?;
        tracing::info!(directory = %self.name, dn = %entry.dn, "Deleted user.");
        report(Change::made(&self.name, &entry.dn, "delete_user", Vec::new()));
        Ok(())
    }

    /// Moves the user to another OU (given by DN); returns its new DN.
    pub async fn move_user(&self, id: &UserId, ou: &str) -> Result<String, DirectoryError> {
        let ou = parse_dn("ou", ou)?;
        let target = Self::dry_target(id);
        if self.plan("move_user", &target, BTreeMap::new(), format!("would move {target} to {ou}")).is_some() {
            return Ok(match Dn::parse(&target) {
                Ok(dn) => format!("{},{ou}", dn.leaf_rdn()),
                Err(_) => target,
            });
        }
        let entry = self.locate(id, &["1.1"]).await?;
        let old = parse_dn("dn", &entry.dn)?;
        let rdn = old.leaf_rdn();
        let new_dn = format!("{rdn},{ou}");
        let (dn, sup) = (entry.dn.clone(), ou.to_string());
        self.run(
            || format!("move {} to {ou}", entry.dn),
            |mut l| async move { l.modifydn(&dn, &rdn, true, Some(&sup)).await?.success() },
        )
        .await?;
        tracing::info!(directory = %self.name, from = %entry.dn, to = %new_dn, "Moved user.");
        let moved = attr("dn", std::slice::from_ref(&entry.dn), std::slice::from_ref(&new_dn));
        report(Change::made(&self.name, &entry.dn, "move_user", vec![moved]));
        Ok(new_dn)
    }

    /// Renames the user's entry (its CN); the logon name is not changed. Returns the new DN.
    pub async fn rename_user(&self, id: &UserId, new_name: &str) -> Result<String, DirectoryError> {
        let new_name = new_name.trim();
        if new_name.is_empty() || new_name.chars().count() > 64 {
            return Err(invalid("a new name must have 1 to 64 characters".into()));
        }
        let target = Self::dry_target(id);
        if self.plan("rename_user", &target, BTreeMap::new(), format!("would rename {target} to {new_name}")).is_some()
        {
            return Ok(match Dn::parse(&target).ok().and_then(|d| d.parent()) {
                Some(parent) => parent.child(self.schema.rdn, new_name).to_string(),
                None => target,
            });
        }
        let entry = self.locate(id, &["1.1"]).await?;
        self.rename_entry(&entry.dn, new_name).await
    }

    /// Renames an entry by DN, keeping its naming attribute's type.
    pub(crate) async fn rename_entry(&self, dn: &str, new_name: &str) -> Result<String, DirectoryError> {
        let old = parse_dn("dn", dn)?;
        let attr = old.leaf_rdn().split('=').next().unwrap_or(self.schema.rdn).to_string();
        let parent = old.parent().ok_or_else(|| invalid(format!("{dn} has no parent to rename within")))?;
        let new = parent.child(&attr, new_name);
        let rdn = new.leaf_rdn();
        let what = format!("rename {dn} to {rdn}");
        self.run(|| what, |mut l| async move { l.modifydn(dn, &rdn, true, None).await?.success() }).await?;
        tracing::info!(directory = %self.name, from = %dn, to = %new, "Renamed user.");
        let new = new.to_string();
        let renamed = super::audit::attr("dn", &[dn.to_string()], std::slice::from_ref(&new));
        report(Change::made(&self.name, dn, "rename_user", vec![renamed]));
        Ok(new)
    }

    /// Sets a new password. Only over LDAPS or StartTLS: on a plain connection this fails
    /// before anything is sent. `must_change`: the user must change it at next logon (AD).
    pub async fn reset_password(
        &self,
        id: &UserId,
        password: &Secret,
        must_change: bool,
    ) -> Result<(), DirectoryError> {
        self.require_secure()?;
        if password.expose().is_empty() {
            return Err(invalid("the new password is empty".into()));
        }
        if must_change && self.kind != DirectoryKind::ActiveDirectory {
            return Err(DirectoryError::Unsupported(
                "must_change needs Active Directory's pwdLastSet; OpenLDAP needs the ppolicy overlay for it".into(),
            ));
        }
        let target = Self::dry_target(id);
        let then = if must_change { " (to be changed at next logon)" } else { "" };
        let description = format!("would reset the password of {target}{then}");
        if self.plan("reset_password", &target, BTreeMap::new(), description).is_some() {
            return Ok(());
        }
        let entry = self.locate(id, &["1.1"]).await?;
        match self.kind {
            DirectoryKind::ActiveDirectory => {
                let mut mods =
                    vec![Mod::Replace(b"unicodePwd".to_vec(), HashSet::from([ad::unicode_pwd(password.expose())]))];
                if must_change {
                    mods.push(Mod::Replace(b"pwdLastSet".to_vec(), HashSet::from([b"0".to_vec()])));
                }
                let dn = entry.dn.as_str();
                self.run(
                    || format!("reset the password of {dn}"),
                    |mut l| async move { l.modify(dn, mods).await?.success() },
                )
                .await?;
            }
            DirectoryKind::Ldap => self.set_ldap_password(&entry.dn, password).await?,
        }
        tracing::info!(directory = %self.name, dn = %entry.dn, "Reset password.");
        let what = if must_change { "password reset; to be changed at next logon" } else { "password reset" };
        report(Change::made(&self.name, &entry.dn, "reset_password", Vec::new()).detail(what));
        Ok(())
    }

    /// RFC 3062 Password Modify, so the server hashes the password by its own policy.
    async fn set_ldap_password(&self, dn: &str, password: &Secret) -> Result<(), DirectoryError> {
        self.require_secure()?;
        let pw = password.clone();
        self.run(
            || format!("set the password of {dn}"),
            |mut l| async move {
                let exop = PasswordModify { user_id: Some(dn), old_pass: None, new_pass: Some(pw.expose()) };
                l.extended(exop).await?.success().map(|_| ())
            },
        )
        .await
    }

    /// Sets the user's `manager` to the DN of the user `manager` names, or clears it with
    /// `None`. Returns the manager's DN.
    pub async fn set_manager(&self, id: &UserId, manager: Option<&UserId>) -> Result<Option<String>, DirectoryError> {
        let target = Self::dry_target(id);
        if self.is_dry_run() {
            let (attrs, description) = match manager {
                Some(m) => {
                    let m = Self::dry_target(m);
                    (
                        BTreeMap::from([("manager".to_string(), vec![m.clone()])]),
                        format!("would set the manager of {target} to {m}"),
                    )
                }
                None => (BTreeMap::new(), format!("would clear the manager of {target}")),
            };
            self.plan("set_manager", &target, attrs, description);
            return Ok(manager.map(Self::dry_target));
        }
        let manager_dn = match manager {
            Some(m) => Some(self.locate(m, &["1.1"]).await?.dn),
            None => None,
        };
        let entry = self.locate(id, &["manager"]).await?;
        let wanted = manager_dn.iter().cloned().collect::<Vec<_>>();
        let current = entry.values("manager");
        let same = match (current.first(), &manager_dn) {
            (None, None) => true,
            (Some(c), Some(m)) => Dn::parse(c).ok() == Dn::parse(m).ok(),
            _ => false,
        };
        if !same {
            self.apply_changes(&entry, &BTreeMap::from([("manager".to_string(), wanted)]), "set_manager").await?;
        }
        Ok(manager_dn)
    }
}
