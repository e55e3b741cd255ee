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
    /// Attributes that only dedicated operations may write (password, naming, flags).
    pub protected: &'static [&'static str],
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
    protected: &["unicodePwd", "userPassword", "cn", "name", "distinguishedName", "objectClass", "memberOf"],
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
    protected: &["userPassword", "cn", "objectClass", "memberOf"],
};

impl Schema {
    /// Whether `attr` may only be written by a dedicated operation, and which one.
    pub fn protected_hint(&self, attr: &str) -> Option<&'static str> {
        let hit = self.protected.iter().any(|p| p.eq_ignore_ascii_case(attr));
        hit.then(|| match attr.to_ascii_lowercase().as_str() {
            "unicodepwd" | "userpassword" => "use reset_password",
            "cn" | "name" | "distinguishedname" => "use rename_user or move_user",
            "memberof" => "use add_to_group / remove_from_group",
            _ => "it is managed by the directory",
        })
    }
}
