//! Distinguished names (RFC 4514): parsing what configuration and servers write, building
//! DNs from untrusted values, and comparing them the way a directory does.
//!
//! Values are escaped with `ldap3::dn_escape` when a DN is built; parsing accepts both the
//! `\,` and the `\2c` forms (Active Directory returns the first, ldap3 writes the second) so
//! that a DN read from the server and one built here compare equal.

use std::fmt;

/// A parsed distinguished name; `rdns[0]` is the leaf (the entry itself).
#[derive(Debug, Clone)]
pub struct Dn {
    rdns: Vec<Rdn>,
}

/// One relative distinguished name: usually one `type=value`, several when joined by `+`.
#[derive(Debug, Clone)]
pub struct Rdn {
    avas: Vec<(String, String)>,
}

/// Why text is not a distinguished name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a distinguished name: {reason}")]
pub struct DnError {
    text: String,
    reason: &'static str,
}

impl Dn {
    /// Parses a DN as RFC 4514 writes it; spaces around `,`, `+` and `=` are tolerated, as
    /// Active Directory tools write `CN=x, OU=y`.
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        let err = |reason| DnError { text: text.to_string(), reason };
        if text.trim().is_empty() {
            return Err(err("it is empty"));
        }
        let mut rdns = Vec::new();
        let mut avas = Vec::new();
        let mut chars = text.char_indices().peekable();
        loop {
            // attribute type
            let mut attr = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                attr.push(c);
            }
            let attr = attr.trim();
            if attr.is_empty() {
                return Err(err("an attribute type is missing (expected `type=value`)"));
            }
            if !is_attribute_type(attr) {
                return Err(err("an attribute type has characters other than letters, digits and `-`"));
            }
            // value, up to an unescaped `,`, `;`, `+` or the end
            let mut bytes: Vec<u8> = Vec::new();
            let mut trailing_unescaped_spaces = 0usize;
            let mut leading = true;
            let mut end = None;
            while let Some((_, c)) = chars.next() {
                match c {
                    ',' | ';' | '+' => {
                        end = Some(c);
                        break;
                    }
                    '\\' => {
                        let Some((_, n)) = chars.next() else {
                            return Err(err("it ends with a lone `\\`"));
                        };
                        if n.is_ascii_hexdigit() {
                            let Some((_, n2)) = chars.next().filter(|(_, d)| d.is_ascii_hexdigit()) else {
                                return Err(err("a `\\` is followed by one hex digit instead of two"));
                            };
                            let hex = [n as u8, n2 as u8];
                            let s = std::str::from_utf8(&hex).expect("ascii hex");
                            bytes.push(u8::from_str_radix(s, 16).expect("two hex digits"));
                        } else if "\"+,;<>\\ #=".contains(n) {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(n.encode_utf8(&mut buf).as_bytes());
                        } else {
                            return Err(err("a `\\` escapes a character that needs no escaping"));
                        }
                        trailing_unescaped_spaces = 0;
                        leading = false;
                    }
                    ' ' if leading => {}
                    '=' | '"' | '<' | '>' => {
                        return Err(err("a value has an unescaped special character (`=`, `\"`, `<` or `>`)"));
                    }
                    _ => {
                        leading = false;
                        if c == ' ' {
                            trailing_unescaped_spaces += 1;
                        } else {
                            trailing_unescaped_spaces = 0;
                        }
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            bytes.truncate(bytes.len() - trailing_unescaped_spaces);
            let value = String::from_utf8(bytes).map_err(|_| err("an escaped value is not UTF-8"))?;
            if value.is_empty() {
                return Err(err("a value is empty"));
            }
            avas.push((attr.to_string(), value));
            match end {
                Some('+') => continue,
                Some(_) => {
                    rdns.push(Rdn { avas: std::mem::take(&mut avas) });
                }
                None => {
                    rdns.push(Rdn { avas: std::mem::take(&mut avas) });
                    break;
                }
            }
        }
        Ok(Dn { rdns })
    }

    /// The DN of a child entry `attr=value` (the value escaped) under this one.
    pub fn child(&self, attr: &str, value: &str) -> Dn {
        let mut rdns = Vec::with_capacity(self.rdns.len() + 1);
        rdns.push(Rdn { avas: vec![(attr.to_string(), value.to_string())] });
        rdns.extend(self.rdns.iter().cloned());
        Dn { rdns }
    }

    /// The value of the leaf's first attribute (`Zoë O'Brien` for `CN=Zoë O'Brien,OU=...`).
    pub fn leaf_value(&self) -> &str {
        &self.rdns[0].avas[0].1
    }

    /// The leaf RDN as text (`CN=Zoë O'Brien`), escaped.
    pub fn leaf_rdn(&self) -> String {
        self.rdns[0].to_string()
    }

    /// The parent DN, or `None` for a one-RDN name.
    pub fn parent(&self) -> Option<Dn> {
        (self.rdns.len() > 1).then(|| Dn { rdns: self.rdns[1..].to_vec() })
    }

    /// Whether this DN is `base` or lies beneath it.
    pub fn is_within(&self, base: &Dn) -> bool {
        let n = base.rdns.len();
        self.rdns.len() >= n && self.rdns[self.rdns.len() - n..].iter().zip(&base.rdns).all(|(a, b)| a.key() == b.key())
    }

    /// The DNS domain spelled by the `DC=` components (`example.com` for
    /// `OU=Staff,DC=example,DC=com`), if there are any.
    pub fn dns_domain(&self) -> Option<String> {
        let labels: Vec<&str> = self
            .rdns
            .iter()
            .filter_map(|r| match r.avas.as_slice() {
                [(attr, value)] if attr.eq_ignore_ascii_case("dc") => Some(value.as_str()),
                _ => None,
            })
            .collect();
        (!labels.is_empty()).then(|| labels.join("."))
    }

    /// A form for comparisons: types and values lowercased, escapes normalised. Directories
    /// compare DNs (and the `cn` values in them) without regard to case.
    pub fn key(&self) -> String {
        self.rdns.iter().map(Rdn::key).collect::<Vec<_>>().join(",")
    }
}

impl Rdn {
    fn key(&self) -> String {
        let mut avas: Vec<String> = self
            .avas
            .iter()
            .map(|(a, v)| format!("{}={}", a.to_lowercase(), escape_value(&v.to_lowercase())))
            .collect();
        avas.sort();
        avas.join("+")
    }
}

impl PartialEq for Dn {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Dn {}

impl fmt::Display for Rdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (attr, value)) in self.avas.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{attr}={}", escape_value(value))?;
        }
        Ok(())
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{rdn}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Dn {
    type Err = DnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dn::parse(s)
    }
}

/// Escapes an attribute value for use inside a DN (RFC 4514).
pub fn escape_value(value: &str) -> std::borrow::Cow<'_, str> {
    ldap3::dn_escape(value)
}

/// Whether `s` is an attribute type: a descriptor (`givenName`, `msDS-x`) or a numeric OID.
pub fn is_attribute_type(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => chars.all(|c| c.is_ascii_alphanumeric() || c == '-'),
        // RFC 4512 numericoid: no empty arcs and no leading zeros (`1.02` is not `1.2`).
        Some(c) if c.is_ascii_digit() => s
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_spaced_dns() {
        let dn = Dn::parse("CN=Jane Doe, OU=Staff ,DC=example,DC=com").unwrap();
        assert_eq!(dn.to_string(), "CN=Jane Doe,OU=Staff,DC=example,DC=com");
        assert_eq!(dn.leaf_value(), "Jane Doe");
        assert_eq!(dn.parent().unwrap().to_string(), "OU=Staff,DC=example,DC=com");
        assert_eq!(dn.dns_domain().as_deref(), Some("example.com"));
    }

    #[test]
    fn both_escape_forms_compare_equal() {
        let ad = Dn::parse(r"CN=O'Brien\, Zoë,OU=Staff,DC=example,DC=test").unwrap();
        let hex = Dn::parse(r"cn=o'brien\2c zoë,ou=staff,dc=example,dc=test").unwrap();
        assert_eq!(ad, hex);
        assert_eq!(ad.leaf_value(), "O'Brien, Zoë");
        let utf8_hex = Dn::parse(r"CN=Zo\c3\ab,DC=x").unwrap();
        assert_eq!(utf8_hex.leaf_value(), "Zoë");
    }

    #[test]
    fn building_escapes_every_special_character() {
        let ou = Dn::parse("OU=Staff,DC=example,DC=com").unwrap();
        let hostile = r#" #a,b+c"d\e<f>g;h=i "#;
        let dn = ou.child("CN", hostile);
        let text = dn.to_string();
        assert!(text.ends_with(",OU=Staff,DC=example,DC=com"), "{text}");
        let back = Dn::parse(&text).unwrap();
        assert_eq!(back.leaf_value(), hostile);
        assert_eq!(back.parent().unwrap(), ou);
        let filter_like = ou.child("CN", "*)(objectClass=*");
        assert_eq!(Dn::parse(&filter_like.to_string()).unwrap().leaf_value(), "*)(objectClass=*");
    }

    #[test]
    fn rejects_what_is_not_a_dn() {
        for bad in ["", "   ", "jdoe", "CN=", "=x", "CN=a,", "CN=a\\", "CN=a\\4", "C N=a", "CN=a=b", "CN=a\\q"] {
            assert!(Dn::parse(bad).is_err(), "{bad:?} parsed");
        }
        let e = Dn::parse("OU=Staff;;DC=x").unwrap_err();
        assert!(e.to_string().contains("OU=Staff;;DC=x"), "{e}");
    }

    #[test]
    fn containment_ignores_case() {
        let base = Dn::parse("DC=Example,DC=COM").unwrap();
        assert!(Dn::parse("OU=Staff,DC=example,DC=com").unwrap().is_within(&base));
        assert!(base.is_within(&base));
        assert!(!Dn::parse("OU=Staff,DC=other,DC=com").unwrap().is_within(&base));
        assert!(!Dn::parse("DC=com").unwrap().is_within(&base));
    }

    #[test]
    fn multi_valued_rdns_round_trip() {
        let dn = Dn::parse("CN=a+UID=b,DC=x").unwrap();
        assert_eq!(dn.to_string(), "CN=a+UID=b,DC=x");
        assert_eq!(dn, Dn::parse("uid=B+cn=A,dc=X").unwrap());
    }
}
