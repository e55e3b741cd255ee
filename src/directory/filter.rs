//! Search filters (RFC 4515) built from untrusted values.
//!
//! Every value goes through `ldap3::ldap_escape`, so a first name of `*)(objectClass=*` is
//! looked up as that name. Scripts write their own filters as templates whose `{}` holes the
//! host fills with escaped values ([`fill_template`]).

use super::error::DirectoryError;

/// `(attr=value)` with the value escaped.
pub fn eq(attr: &str, value: &str) -> String {
    format!("({attr}={})", ldap3::ldap_escape(value))
}

/// `(attr=\xx\xx...)`: a binary value (`objectSid`, `objectGUID`), every byte escaped.
pub fn eq_bytes(attr: &str, value: &[u8]) -> String {
    let mut f = format!("({attr}=");
    for b in value {
        f.push_str(&format!("\\{b:02x}"));
    }
    f.push(')');
    f
}

/// `(attr=value*)`: entries whose `attr` starts with `value` (escaped).
pub fn prefix(attr: &str, value: &str) -> String {
    format!("({attr}={}*)", ldap3::ldap_escape(value))
}

/// `(&...)` of the given filters (one filter stays as it is).
pub fn and(parts: &[String]) -> String {
    combine('&', parts)
}

/// `(|...)` of the given filters (one filter stays as it is).
pub fn or(parts: &[String]) -> String {
    combine('|', parts)
}

fn combine(op: char, parts: &[String]) -> String {
    match parts {
        [one] => one.clone(),
        _ => format!("({op}{})", parts.concat()),
    }
}

/// Fills each `{}` of a script's filter template with the next value, escaped, and checks
/// that the result is a filter. `{{` and `}}` stand for literal braces.
pub fn fill_template(template: &str, values: &[String]) -> Result<String, DirectoryError> {
    let mut out = String::with_capacity(template.len() + values.iter().map(String::len).sum::<usize>());
    let mut next = values.iter();
    let mut used = 0usize;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some('{')) | ('}', Some('}')) => {
                out.push(c);
                chars.next();
            }
            ('{', Some('}')) => {
                chars.next();
                let value = next.next().ok_or_else(|| {
                    DirectoryError::InvalidInput(format!(
                        "the filter `{template}` has more `{{}}` holes than the {} value(s) given",
                        values.len()
                    ))
                })?;
                used += 1;
                out.push_str(&ldap3::ldap_escape(value.as_str()));
            }
            _ => out.push(c),
        }
    }
    if used != values.len() {
        return Err(DirectoryError::InvalidInput(format!(
            "the filter `{template}` has {used} `{{}}` hole(s) but {} value(s) were given",
            values.len()
        )));
    }
    let out = if out.starts_with('(') { out } else { format!("({out})") };
    ldap3::parse_filter(&out)
        .map_err(|_| DirectoryError::InvalidInput(format!("`{out}` is not an LDAP search filter (RFC 4515)")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(eq("givenName", "*)(objectClass=*"), r"(givenName=\2a\29\28objectClass=\2a)");
        assert_eq!(eq("cn", r"a\b"), r"(cn=a\5cb)");
        assert_eq!(prefix("sAMAccountName", "zoe*"), r"(sAMAccountName=zoe\2a*)");
        assert_eq!(eq("sn", "Müller"), "(sn=Müller)");
    }

    #[test]
    fn combines() {
        assert_eq!(and(&[eq("a", "1")]), "(a=1)");
        assert_eq!(or(&[eq("a", "1"), eq("b", "2")]), "(|(a=1)(b=2))");
    }

    #[test]
    fn templates_escape_their_holes() {
        let f = fill_template("(&(objectClass=user)(department={}))", &["R&D *)(x=*".into()]).unwrap();
        assert_eq!(f, r"(&(objectClass=user)(department=R&D \2a\29\28x=\2a))");
        assert_eq!(fill_template("cn={}", &["x".into()]).unwrap(), "(cn=x)");
        assert!(fill_template("(cn={})", &[]).is_err());
        assert!(fill_template("(cn=x)", &["extra".into()]).is_err());
        assert!(fill_template("(cn=x", &[]).is_err());
    }
}
