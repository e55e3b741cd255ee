//! How a script names a user or a group: by DN, account name, UPN, mail or employee ID.
//!
//! Text is recognised by its shape ([`UserId::parse`]): `=` and `,` and a DN that parses
//! make a DN, `@` makes a UPN or mail address, anything else is the account name
//! (`sAMAccountName`, or `uid` on OpenLDAP). [`UserId::by`] names the attribute explicitly,
//! which is how an employee ID is given, and how Active Directory's binary identifiers are:
//! `objectSid` as `S-1-5-21-...` and `objectGUID` as a GUID string, each searched as its bytes
//! (RFC 4515 `\xx` per byte, the GUID in the little-endian order AD stores it).

use std::fmt;

use super::batch::Term;
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
    /// Active Directory's `objectSid`, given as `S-1-5-21-...`: searched as its binary form.
    Sid(Sid),
    /// Active Directory's `objectGUID`, given as `xxxxxxxx-xxxx-...`: searched as its 16
    /// bytes in the order AD stores them.
    Guid(Guid),
}

/// A security identifier (MS-DTYP 2.4.2): revision 1, a 48-bit authority, 1 to 15 32-bit
/// sub-authorities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sid {
    authority: u64,
    subs: Vec<u32>,
}

impl Sid {
    /// Parses the text form `S-1-5-21-...`. Anything else (another revision, a number out of
    /// range, a sign, spaces, more than 15 sub-authorities) is an error that says so.
    pub fn parse(text: &str) -> Result<Sid, DirectoryError> {
        let bad = |why: &str| {
            DirectoryError::InvalidInput(format!(
                "`{}` is not a SID ({why}); a SID reads S-1-5-21-<domain>-<RID>",
                text.chars().take(80).collect::<String>()
            ))
        };
        let mut parts = text.split('-');
        if !parts.next().is_some_and(|s| s.eq_ignore_ascii_case("S")) {
            return Err(bad("it does not start with S-"));
        }
        let number = |p: Option<&str>, what: &str| -> Result<u64, DirectoryError> {
            let p = p.ok_or_else(|| bad(&format!("the {what} is missing")))?;
            if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("the {what} `{p}` is not a number")));
            }
            p.parse::<u64>().map_err(|_| bad(&format!("the {what} `{p}` is out of range")))
        };
        if number(parts.next(), "revision")? != 1 {
            return Err(bad("only revision 1 exists"));
        }
        let authority = number(parts.next(), "identifier authority")?;
        if authority >= 1 << 48 {
            return Err(bad("the identifier authority is out of range"));
        }
        let subs = parts
            .map(|p| {
                let n = number(Some(p), "sub-authority")?;
                u32::try_from(n).map_err(|_| bad(&format!("the sub-authority `{p}` is out of range")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if subs.is_empty() || subs.len() > 15 {
            return Err(bad("a SID has 1 to 15 sub-authorities"));
        }
        Ok(Sid { authority, subs })
    }

    /// The binary form, as `objectSid` holds it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![1u8, self.subs.len() as u8];
        b.extend_from_slice(&self.authority.to_be_bytes()[2..]);
        for s in &self.subs {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    /// A binary SID, or `None` when the bytes are not one.
    pub fn from_bytes(b: &[u8]) -> Option<Sid> {
        let count = *b.get(1)? as usize;
        if b.first() != Some(&1) || count == 0 || count > 15 || b.len() != 8 + 4 * count {
            return None;
        }
        let authority = b[2..8].iter().fold(0u64, |acc, &x| (acc << 8) | x as u64);
        let subs = b[8..].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Some(Sid { authority, subs })
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S-1-{}", self.authority)?;
        self.subs.iter().try_for_each(|s| write!(f, "-{s}"))
    }
}

/// A GUID (`objectGUID`): 16 bytes, of which AD's text form shows the first three groups
/// little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid([u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits in either case, optionally in
    /// braces, as PowerShell and the registry print it).
    pub fn parse(text: &str) -> Result<Guid, DirectoryError> {
        let bad = || {
            DirectoryError::InvalidInput(format!(
                "`{}` is not a GUID; a GUID reads xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (32 hex digits)",
                text.chars().take(80).collect::<String>()
            ))
        };
        let inner = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(text);
        let groups: Vec<&str> = inner.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] || !groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(bad());
        }
        let text_bytes = hex::decode(groups.concat()).map_err(|_| bad())?;
        let mut b = [0u8; 16];
        b.copy_from_slice(&text_bytes);
        // The text shows the first three fields as numbers: AD stores them little-endian.
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Ok(Guid(b))
    }

    /// The 16 bytes in the order `objectGUID` holds them.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// A binary GUID, or `None` when the bytes are not 16.
    pub fn from_bytes(b: &[u8]) -> Option<Guid> {
        Some(Guid(b.try_into().ok()?))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}-{}",
            b[3],
            b[2],
            b[1],
            b[0],
            b[5],
            b[4],
            b[7],
            b[6],
            hex::encode(&b[8..10]),
            hex::encode(&b[10..16])
        )
    }
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
            "dn" | "distinguishedname" => {
                UserId::Dn(Dn::parse(value).map_err(|e| DirectoryError::InvalidInput(e.to_string()))?.to_string())
            }
            "samaccountname" | "sam" | "uid" | "login" | "username" => UserId::Login(v),
            "userprincipalname" | "upn" => UserId::Upn(v),
            "mail" | "email" => UserId::Mail(v),
            "employeeid" | "employeenumber" => UserId::EmployeeId(v),
            "objectsid" | "sid" => UserId::Sid(Sid::parse(value)?),
            "objectguid" | "guid" => UserId::Guid(Guid::parse(value)?),
            _ => {
                return Err(DirectoryError::InvalidInput(format!(
                    "users cannot be looked up by `{attribute}`: use dn, sAMAccountName, userPrincipalName, mail, \
                     employeeID, objectSid or objectGUID"
                )))
            }
        })
    }

    /// The values a look-up of this user asks for, when they are plain attribute values
    /// (not a DN, SID or GUID): an account that has one of them (and matches
    /// `schema.user_filter`) is the user.
    pub(crate) fn terms(&self, schema: &Schema, employee_attr: &str) -> Option<Vec<Term>> {
        Some(match self {
            UserId::Dn(_) | UserId::Sid(_) | UserId::Guid(_) => return None,
            UserId::Login(v) => vec![Term::eq(schema.login, v)],
            UserId::Upn(v) => vec![Term::eq(schema.upn.unwrap_or("mail"), v)],
            UserId::Mail(v) => vec![Term::eq("mail", v)],
            UserId::UpnOrMail(v) => match schema.upn {
                Some(upn) => vec![Term::eq(upn, v), Term::eq("mail", v)],
                None => vec![Term::eq("mail", v)],
            },
            UserId::EmployeeId(v) => vec![Term::eq(employee_attr, v)],
        })
    }

    /// The search filter that finds this user (not for [`UserId::Dn`], which is read directly).
    pub(crate) fn filter(&self, schema: &Schema, employee_attr: &str) -> String {
        let inner = match self {
            UserId::Dn(dn) => filter::eq("distinguishedName", dn),
            UserId::Sid(sid) => filter::eq_bytes("objectSid", &sid.to_bytes()),
            UserId::Guid(guid) => filter::eq_bytes("objectGUID", &guid.to_bytes()),
            _ => {
                let terms = self.terms(schema, employee_attr).unwrap_or_default();
                filter::or(&terms.iter().map(Term::filter).collect::<Vec<_>>())
            }
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
            UserId::Sid(v) => write!(f, "user with objectSid {v}"),
            UserId::Guid(v) => write!(f, "user with objectGUID {v}"),
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
    use crate::class::Classify;
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
        assert!(UserId::by("objectClass", "user").unwrap_err().to_string().contains("employeeID, objectSid"));
        assert!(UserId::by("objectSid", "S-1").unwrap_err().to_string().contains("is not a SID"));
        assert!(UserId::by("mail", "").is_err());
    }

    #[test]
    fn sids_round_trip_and_hostile_text_is_refused() {
        let sid = Sid::parse("S-1-5-21-3623811015-3361044348-30300820-1013").unwrap();
        let bytes = sid.to_bytes();
        assert_eq!(&bytes[..8], &[1, 5, 0, 0, 0, 0, 0, 5]);
        assert_eq!(&bytes[8..12], &21u32.to_le_bytes());
        assert_eq!(bytes.len(), 8 + 4 * 5);
        assert_eq!(Sid::from_bytes(&bytes).unwrap(), sid);
        assert_eq!(sid.to_string(), "S-1-5-21-3623811015-3361044348-30300820-1013");
        assert_eq!(Sid::parse("S-1-5-32-544").unwrap().to_string(), "S-1-5-32-544");
        for hostile in [
            "",
            "S-1",
            "S-1-5",
            "S-2-5-21-1",
            "S-1-5-21-4294967296",
            "S-1-281474976710656-1",
            "S-1-5-21-+1",
            "S-1-5-21--1",
            "S-1-5-21-1 ",
            "S-1-5-21-*)(objectClass=*",
            "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16",
            "S-1-5-21-99999999999999999999999",
        ] {
            let e = Sid::parse(hostile).unwrap_err();
            assert!(e.to_string().contains("is not a SID"), "{hostile:?}: {e}");
            assert!(!e.is_transient());
        }
        assert_eq!(Sid::from_bytes(&[1, 2, 0, 0, 0, 0, 0, 5, 1, 0, 0, 0]), None, "too short for two");
        assert_eq!(Sid::from_bytes(&[]), None);
    }

    #[test]
    fn guids_keep_ads_byte_order_and_hostile_text_is_refused() {
        let g = Guid::parse("00112233-4455-6677-8899-AABBCCDDEEFF").unwrap();
        assert_eq!(
            g.to_bytes(),
            [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        );
        assert_eq!(g.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(Guid::parse("{00112233-4455-6677-8899-aabbccddeeff}").unwrap(), g);
        assert_eq!(Guid::from_bytes(&g.to_bytes()), Some(g));
        for hostile in [
            "",
            "00112233445566778899aabbccddeeff",
            "00112233-4455-6677-8899-aabbccddeef",
            "00112233-4455-6677-8899-aabbccddeefg",
            "0011223-34455-6677-8899-aabbccddeeff",
            "{00112233-4455-6677-8899-aabbccddeeff",
            "00112233-4455-6677-8899-aabbccddeeff-00",
            "*)(objectClass=*",
        ] {
            let e = Guid::parse(hostile).unwrap_err();
            assert!(e.to_string().contains("is not a GUID"), "{hostile:?}: {e}");
        }
    }

    #[test]
    fn binary_identifiers_are_escaped_byte_by_byte() {
        let f = UserId::by("objectSid", "S-1-5-21-1-2-3-500").unwrap().filter(&AD, "employeeID");
        assert!(f.contains(r"(objectSid=\01\05\00\00\00\00\00\05\15\00\00\00\01\00\00\00"), "{f}");
        assert!(f.ends_with(r"\f4\01\00\00))"), "{f}");
        assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
        let f = UserId::by("objectGUID", "00112233-4455-6677-8899-aabbccddeeff").unwrap().filter(&AD, "employeeID");
        assert!(f.contains(r"(objectGUID=\33\22\11\00\55\44\77\66\88\99\aa\bb\cc\dd\ee\ff)"), "{f}");
        assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
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
