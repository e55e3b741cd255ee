//! How a script names a user or a group: by DN, account name, UPN, mail or employee ID.
//!
//! Text is recognised by its shape ([`UserId::parse`]): `=` and `,` and a DN that parses
//! make a DN, `@` makes a UPN or mail address, anything else is the account name
//! (`sAMAccountName`, or `uid` on OpenLDAP). [`UserId::by`] names the attribute explicitly,
//! which is how an employee ID is given.

use std::fmt;

use super::dn::Dn;
use super::error::DirectoryError;
use super::filter;
use super::schema::Schema;

/// A user, as a script names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserId {
    /// The entry's distinguished name.
    Dn(String),
    /// The logon name: `sAMAccountName` on AD, `uid` on OpenLDAP.
    Login(String),
    /// A `name@domain` text: matched against `userPrincipalName` and `mail`.
    UpnOrMail(String),
    /// `userPrincipalName` only.
    Upn(String),
    /// `mail` only.
    Mail(String),
    /// The HR key (`employeeID` on AD, `employeeNumber` on OpenLDAP, or as mapped).
    EmployeeId(String),
}

impl UserId {
    /// Recognises the kind of identifier from its shape.
    pub fn parse(text: &str) -> Result<UserId, DirectoryError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DirectoryError::InvalidInput("a user identifier is empty".into()));
        }
        if text.contains('=') && text.contains(',') {
            if let Ok(dn) = Dn::parse(text) {
                return Ok(UserId::Dn(dn.to_string()));
            }
        }
        if text.contains('@') {
            return Ok(UserId::UpnOrMail(text.to_string()));
        }
        Ok(UserId::Login(text.to_string()))
    }

    /// An identifier by an explicit attribute: `dn`, `sAMAccountName` (also `uid`, `login`,
    /// `username`), `userPrincipalName` (`upn`), `mail` (`email`) or `employeeID`
    /// (`employeeNumber`, `employee_id`). Case does not matter.
    pub fn by(attribute: &str, value: &str) -> Result<UserId, DirectoryError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(DirectoryError::InvalidInput(format!("the {attribute} to look a user up by is empty")));
        }
        let v = value.to_string();
        Ok(match attribute.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
            "dn" | "distinguishedname" => UserId::Dn(
                Dn::parse(value).map_err(|e| DirectoryError::InvalidInput(e.to_string()))?.to_string(),
            ),
            "samaccountname" | "sam" | "uid" | "login" | "username" => UserId::Login(v),
            "userprincipalname" | "upn" => UserId::Upn(v),
            "mail" | "email" => UserId::Mail(v),
            "employeeid" | "employeenumber" => UserId::EmployeeId(v),
            _ => {
                return Err(DirectoryError::InvalidInput(format!(
                    "users cannot be looked up by `{attribute}`: use dn, sAMAccountName, userPrincipalName, mail or employeeID"
                )))
            }
        })
    }

    /// The search filter that finds this user (not for [`UserId::Dn`], which is read directly).
    pub(crate) fn filter(&self, schema: &Schema, employee_attr: &str) -> String {
        let inner = match self {
            UserId::Dn(dn) => filter::eq("distinguishedName", dn),
            UserId::Login(v) => filter::eq(schema.login, v),
            UserId::Upn(v) => filter::eq(schema.upn.unwrap_or("mail"), v),
            UserId::Mail(v) => filter::eq("mail", v),
            UserId::UpnOrMail(v) => match schema.upn {
                Some(upn) => filter::or(&[filter::eq(upn, v), filter::eq("mail", v)]),
                None => filter::eq("mail", v),
            },
            UserId::EmployeeId(v) => filter::eq(employee_attr, v),
        };
        filter::and(&[schema.user_filter.to_string(), inner])
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserId::Dn(v) => write!(f, "user {v}"),
            UserId::Login(v) => write!(f, "user with account name {v}"),
            UserId::UpnOrMail(v) => write!(f, "user with UPN or mail {v}"),
            UserId::Upn(v) => write!(f, "user with UPN {v}"),
            UserId::Mail(v) => write!(f, "user with mail {v}"),
            UserId::EmployeeId(v) => write!(f, "user with employee ID {v}"),
        }
    }
}

impl std::str::FromStr for UserId {
    type Err = DirectoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserId::parse(s)
    }
}

/// A group, named by DN or by name (`cn`, or `sAMAccountName` on AD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupId {
    /// The group's distinguished name.
    Dn(String),
    /// The group's name, looked up under `groups_base`.
    Name(String),
}

impl GroupId {
    /// A DN when the text parses as one (with `=` and `,`), a name otherwise.
    pub fn parse(text: &str) -> Result<GroupId, DirectoryError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DirectoryError::InvalidInput("a group name is empty".into()));
        }
        if text.contains('=') && text.contains(',') {
            if let Ok(dn) = Dn::parse(text) {
                return Ok(GroupId::Dn(dn.to_string()));
            }
        }
        Ok(GroupId::Name(text.to_string()))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Dn(v) => write!(f, "group {v}"),
            GroupId::Name(v) => write!(f, "group {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::schema::{AD, LDAP};

    #[test]
    fn shapes_are_recognised() {
        assert_eq!(UserId::parse("jdoe").unwrap(), UserId::Login("jdoe".into()));
        assert_eq!(UserId::parse(" jdoe@example.com ").unwrap(), UserId::UpnOrMail("jdoe@example.com".into()));
        assert_eq!(
            UserId::parse(r"CN=Doe\, Jane,OU=Staff,DC=example,DC=com").unwrap(),
            UserId::Dn(r"CN=Doe\2c Jane,OU=Staff,DC=example,DC=com".into())
        );
        // `=` and `,` but no DN: an account name (which AD would then refuse or not find)
        assert_eq!(UserId::parse("a=,b").unwrap(), UserId::Login("a=,b".into()));
        assert!(UserId::parse("  ").is_err());
    }

    #[test]
    fn explicit_attributes() {
        assert_eq!(UserId::by("employeeID", "E-1").unwrap(), UserId::EmployeeId("E-1".into()));
        assert_eq!(UserId::by("employee_id", "E-1").unwrap(), UserId::EmployeeId("E-1".into()));
        assert_eq!(UserId::by("sAMAccountName", "jd").unwrap(), UserId::Login("jd".into()));
        assert_eq!(UserId::by("UPN", "jd@x").unwrap(), UserId::Upn("jd@x".into()));
        assert_eq!(UserId::by("email", "jd@x").unwrap(), UserId::Mail("jd@x".into()));
        assert!(UserId::by("dn", "not a dn").is_err());
        assert!(UserId::by("objectSid", "S-1").unwrap_err().to_string().contains("employeeID"));
        assert!(UserId::by("mail", "").is_err());
    }

    #[test]
    fn filters_escape_and_follow_the_kind() {
        let hostile = UserId::Login("*)(objectClass=*".into());
        let f = hostile.filter(&AD, "employeeID");
        assert!(f.ends_with(r"(sAMAccountName=\2a\29\28objectClass=\2a))"), "{f}");
        assert!(ldap3::parse_filter(&f).is_ok());
        let f = UserId::UpnOrMail("a@b".into()).filter(&AD, "employeeID");
        assert!(f.contains("(|(userPrincipalName=a@b)(mail=a@b))"), "{f}");
        let f = UserId::UpnOrMail("a@b".into()).filter(&LDAP, "employeeNumber");
        assert!(f.contains("(mail=a@b)") && !f.contains("userPrincipalName"), "{f}");
        let f = UserId::EmployeeId("42".into()).filter(&LDAP, "employeeNumber");
        assert!(f.contains("(employeeNumber=42)") && f.contains("inetOrgPerson"), "{f}");
    }
}
