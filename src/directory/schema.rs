//! The attribute and object-class names of each kind of directory: Active Directory's `user`
//! and `group`, OpenLDAP's `inetOrgPerson` and `groupOfNames`. Operations are written once
//! against [`Schema`].

/// Names that differ between kinds of directory.
#[derive(Debug)]
pub struct Schema {
    /// The naming attribute of new users' DNs, spelled as the server writes it.
    pub rdn: &'static str,
    /// Object classes of a new user.
    pub user_classes: &'static [&'static str],
    /// Filter that selects user accounts.
    pub user_filter: &'static str,
    /// The logon name attribute.
    pub login: &'static str,
    /// Longest logon name the directory accepts.
    pub login_max: usize,
    /// The `name@domain` logon attribute, where there is one.
    pub upn: Option<&'static str>,
    /// Default attribute of the HR key.
    pub employee_id: &'static str,
    /// Filter that selects groups.
    pub group_filter: &'static str,
    /// Attributes a group is looked up by when named without a DN.
    pub group_names: &'static [&'static str],
    /// The group attribute that lists members' DNs.
    pub member: &'static str,
}

/// Active Directory (and Samba AD).
pub static AD: Schema = Schema {
    rdn: "CN",
    user_classes: &["top", "person", "organizationalPerson", "user"],
    user_filter: "(&(objectClass=user)(!(objectClass=computer)))",
    login: "sAMAccountName",
    login_max: 20,
    upn: Some("userPrincipalName"),
    employee_id: "employeeID",
    group_filter: "(objectClass=group)",
    group_names: &["cn", "sAMAccountName"],
    member: "member",
};

/// OpenLDAP and other servers with the `inetOrgPerson` schema.
pub static LDAP: Schema = Schema {
    rdn: "cn",
    user_classes: &["top", "person", "organizationalPerson", "inetOrgPerson"],
    user_filter: "(objectClass=inetOrgPerson)",
    login: "uid",
    login_max: 256,
    upn: None,
    employee_id: "employeeNumber",
    group_filter: "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
    group_names: &["cn"],
    member: "member",
};

/// Which write an attribute map is for: some attributes may be given when an account is
/// created (its UPN, its manager's DN) but not changed afterwards by `update_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `create_user`'s attributes.
    Create,
    /// `update_user`'s changes, and the HR mapping (which the sync writes on every update).
    Update,
}

/// Families of protected attributes; each says what to use instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    AccountFlags,
    LogonName,
    Naming,
    Password,
    Membership,
    Manager,
    /// Grants access, or is who the account is: not written by tripline at all.
    AccessOrIdentity,
    /// Kept by the directory itself.
    DirectoryManaged,
}

/// Protected attributes: name, numeric OID (`""` when none is listed; any OID that is not
/// listed is refused anyway, see [`protection`]), family.
const PROTECTED: &[(&str, &str, Family)] = &[
    ("userAccountControl", "1.2.840.113556.1.4.8", Family::AccountFlags),
    ("sAMAccountName", "1.2.840.113556.1.4.221", Family::LogonName),
    ("userPrincipalName", "1.2.840.113556.1.4.656", Family::LogonName),
    ("uid", "0.9.2342.19200300.100.1.1", Family::LogonName),
    ("cn", "2.5.4.3", Family::Naming),
    ("name", "1.2.840.113556.1.4.1", Family::Naming),
    ("name", "2.5.4.41", Family::Naming),
    ("distinguishedName", "2.5.4.49", Family::Naming),
    ("unicodePwd", "1.2.840.113556.1.4.90", Family::Password),
    ("userPassword", "2.5.4.35", Family::Password),
    ("pwdLastSet", "1.2.840.113556.1.4.96", Family::Password),
    ("dBCSPwd", "1.2.840.113556.1.4.55", Family::Password),
    ("ntPwdHistory", "1.2.840.113556.1.4.94", Family::Password),
    ("lmPwdHistory", "1.2.840.113556.1.4.160", Family::Password),
    ("supplementalCredentials", "1.2.840.113556.1.4.125", Family::Password),
    ("unixUserPassword", "1.2.840.113556.1.4.1910", Family::Password),
    ("msSFU30Password", "", Family::Password),
    ("clearTextPassword", "", Family::Password),
    ("pwdReset", "1.3.6.1.4.1.42.2.27.8.1.22", Family::Password),
    ("member", "2.5.4.31", Family::Membership),
    ("memberOf", "1.2.840.113556.1.2.102", Family::Membership),
    ("manager", "0.9.2342.19200300.100.1.10", Family::Manager),
    ("primaryGroupID", "1.2.840.113556.1.4.98", Family::AccessOrIdentity),
    ("objectSid", "1.2.840.113556.1.4.146", Family::AccessOrIdentity),
    ("sIDHistory", "1.2.840.113556.1.4.609", Family::AccessOrIdentity),
    ("nTSecurityDescriptor", "1.2.840.113556.1.2.281", Family::AccessOrIdentity),
    ("msDS-KeyCredentialLink", "1.2.840.113556.1.4.2328", Family::AccessOrIdentity),
    ("msDS-AllowedToDelegateTo", "1.2.840.113556.1.4.1787", Family::AccessOrIdentity),
    ("msDS-AllowedToActOnBehalfOfOtherIdentity", "1.2.840.113556.1.4.2182", Family::AccessOrIdentity),
    ("servicePrincipalName", "1.2.840.113556.1.4.771", Family::AccessOrIdentity),
    ("adminCount", "1.2.840.113556.1.4.150", Family::AccessOrIdentity),
    ("altSecurityIdentities", "1.2.840.113556.1.4.867", Family::AccessOrIdentity),
    ("msDS-SupportedEncryptionTypes", "1.2.840.113556.1.4.1963", Family::AccessOrIdentity),
    ("msDS-GroupMSAMembership", "", Family::AccessOrIdentity),
    ("msDS-HostServiceAccount", "", Family::AccessOrIdentity),
    ("msDS-AssignedAuthNPolicy", "", Family::AccessOrIdentity),
    ("msDS-AssignedAuthNPolicySilo", "", Family::AccessOrIdentity),
    ("mS-DS-ConsistencyGuid", "", Family::AccessOrIdentity),
    ("msDS-ExternalDirectoryObjectId", "", Family::AccessOrIdentity),
    ("uidNumber", "1.3.6.1.1.1.1.0", Family::AccessOrIdentity),
    ("gidNumber", "1.3.6.1.1.1.1.1", Family::AccessOrIdentity),
    ("sshPublicKey", "1.3.6.1.4.1.24552.500.1.1.1.13", Family::AccessOrIdentity),
    ("krbPrincipalName", "2.16.840.1.113719.1.301.4.1.1", Family::AccessOrIdentity),
    ("krbPrincipalKey", "", Family::AccessOrIdentity),
    ("krbCanonicalName", "", Family::AccessOrIdentity),
    ("pwdPolicySubentry", "1.3.6.1.4.1.42.2.27.8.1.23", Family::AccessOrIdentity),
    ("pwdAccountLockedTime", "1.3.6.1.4.1.42.2.27.8.1.17", Family::AccessOrIdentity),
    ("objectClass", "2.5.4.0", Family::DirectoryManaged),
    ("objectCategory", "1.2.840.113556.1.4.782", Family::DirectoryManaged),
    ("objectGUID", "1.2.840.113556.1.4.2", Family::DirectoryManaged),
    ("isCriticalSystemObject", "1.2.840.113556.1.4.868", Family::DirectoryManaged),
    ("instanceType", "1.2.840.113556.1.2.1", Family::DirectoryManaged),
    ("systemFlags", "1.2.840.113556.1.4.375", Family::DirectoryManaged),
    ("isDeleted", "1.2.840.113556.1.2.48", Family::DirectoryManaged),
];

/// Why an attribute map may not write an attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The attribute's usual name (`userAccountControl` for `USERACCOUNTCONTROL;binary`).
    pub attribute: &'static str,
    /// What to do instead: "use enable_user / disable_user".
    pub instead: &'static str,
}

/// Whether an attribute map of `kind` may write `attr`, and if not why. Attribute names are
/// compared as LDAP compares them: without regard to case, without their options
/// (`;binary`, `;range=0-1499`, `;lang-de`), and by numeric OID as well as by name. An OID
/// that is not in the table is refused too: a protected attribute must not be reachable by
/// a spelling the table misses, and scripts name attributes by their names.
pub fn protection(attr: &str, kind: WriteKind) -> Option<Refusal> {
    let base = attr.split(';').next().unwrap_or(attr).trim();
    let numeric = base.starts_with(|c: char| c.is_ascii_digit());
    let Some(&(name, _, family)) =
        PROTECTED.iter().find(|(name, oid, _)| name.eq_ignore_ascii_case(base) || (!oid.is_empty() && *oid == base))
    else {
        return numeric.then_some(Refusal {
            attribute: "",
            instead: "attributes are written by name, not by numeric OID: name the attribute",
        });
    };
    let instead = match (family, kind) {
        (Family::LogonName, WriteKind::Create) if !name.eq_ignore_ascii_case("uid") => return None,
        (Family::Manager, WriteKind::Create) => return None,
        (Family::AccountFlags, WriteKind::Create) => "give enabled: true or false",
        (Family::AccountFlags, WriteKind::Update) => "use enable_user / disable_user",
        (Family::LogonName, WriteKind::Create) => "give it as sAMAccountName (or login)",
        (Family::LogonName, WriteKind::Update) => {
            "a logon name is set when the account is created and tripline never changes it (logons would \
             break); rename_user changes the CN"
        }
        (Family::Naming, WriteKind::Create) => "give name (the CN) and ou",
        (Family::Naming, WriteKind::Update) => "use rename_user or move_user",
        (Family::Password, WriteKind::Create) => "give password (sent only over LDAPS or StartTLS)",
        (Family::Password, WriteKind::Update) => "use reset_password",
        (Family::Membership, WriteKind::Create) => "create the user, then use add_to_group",
        (Family::Membership, WriteKind::Update) => "use add_to_group / remove_from_group",
        (Family::Manager, WriteKind::Update) => "use set_manager",
        (Family::AccessOrIdentity, _) => {
            "it grants access or carries the account's identity; tripline does not write it (change it with \
             the directory's own tools, where it is audited)"
        }
        (Family::DirectoryManaged, _) => "the directory keeps it itself",
    };
    Some(Refusal { attribute: name, instead })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_protected_attribute_is_refused() {
        for spelling in [
            "userAccountControl",
            "USERACCOUNTCONTROL",
            "useraccountcontrol;binary",
            "1.2.840.113556.1.4.8",
            "1.2.840.113556.1.4.8;binary",
        ] {
            let r = protection(spelling, WriteKind::Update).unwrap_or_else(|| panic!("{spelling} allowed"));
            assert_eq!(r.attribute, "userAccountControl", "{spelling}");
            assert!(r.instead.contains("enable_user / disable_user"), "{spelling}: {r:?}");
        }
        assert_eq!(protection("member;range=0-1499", WriteKind::Update).unwrap().attribute, "member");
        assert_eq!(
            protection("msds-keycredentiallink", WriteKind::Update).unwrap().attribute,
            "msDS-KeyCredentialLink"
        );
        assert_eq!(protection("2.5.4.35", WriteKind::Update).unwrap().attribute, "userPassword");
        // An OID the table does not know is refused as well.
        assert!(protection("1.2.840.113556.1.4.9999", WriteKind::Update).unwrap().instead.contains("by name"));
        assert_eq!(protection("title", WriteKind::Update), None);
        assert_eq!(protection("extensionAttribute1", WriteKind::Update), None);
    }

    #[test]
    fn creation_may_set_what_an_update_may_not() {
        assert_eq!(protection("userPrincipalName", WriteKind::Create), None);
        assert_eq!(protection("manager", WriteKind::Create), None);
        assert!(protection("userPrincipalName", WriteKind::Update).unwrap().instead.contains("never changes"));
        assert!(protection("manager", WriteKind::Update).unwrap().instead.contains("set_manager"));
        assert!(protection("userAccountControl", WriteKind::Create).unwrap().instead.contains("enabled"));
        assert!(protection("unicodePwd", WriteKind::Create).unwrap().instead.contains("password"));
        assert!(protection("memberOf", WriteKind::Create).unwrap().instead.contains("add_to_group"));
        assert!(protection("sIDHistory", WriteKind::Create).unwrap().instead.contains("grants access"));
        assert!(protection("objectClass", WriteKind::Create).is_some());
    }
}
