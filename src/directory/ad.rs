//! Active Directory specifics: the `userAccountControl` flags, the `unicodePwd` encoding, and
//! AD's numeric error codes turned into sentences an administrator can act on.

/// `userAccountControl` bit: the account is disabled.
pub const ACCOUNTDISABLE: u32 = 0x0002;
/// `userAccountControl` bit: an ordinary user account.
pub const NORMAL_ACCOUNT: u32 = 0x0200;

/// `userAccountControl` with only the ACCOUNTDISABLE bit changed; every other flag (password
/// never expires, smart card required, ...) stays as it was.
pub fn with_disabled(uac: u32, disabled: bool) -> u32 {
    if disabled {
        uac | ACCOUNTDISABLE
    } else {
        uac & !ACCOUNTDISABLE
    }
}

/// Whether `userAccountControl` says the account is disabled.
pub fn is_disabled(uac: u32) -> bool {
    uac & ACCOUNTDISABLE != 0
}

/// The value AD expects in `unicodePwd`: the password in double quotes, UTF-16LE.
pub fn unicode_pwd(password: &str) -> Vec<u8> {
    format!("\"{password}\"").encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The Win32 error code at the start of AD's diagnostic text (`0000052D: Constraint
/// violation - ...`).
pub fn win32_code(text: &str) -> Option<u32> {
    let head = text.get(..8)?;
    if text.as_bytes().get(8) != Some(&b':') || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(head, 16).ok()
}

/// The sub-code of a failed bind (`... AcceptSecurityContext error, data 52e, v4563`).
pub fn bind_data_code(text: &str) -> Option<u32> {
    let at = text.find("data ")? + 5;
    let code: String = text[at..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u32::from_str_radix(&code, 16).ok()
}

/// A sentence for a failed bind, from its `data` sub-code.
pub fn bind_sentence(text: &str) -> Option<&'static str> {
    Some(match bind_data_code(text)? {
        0x525 => "the bind account does not exist",
        0x52e => "the bind password is wrong",
        0x530 => "the bind account may not log on at this time",
        0x531 => "the bind account may not log on from this workstation",
        0x532 => "the bind account's password has expired",
        0x533 => "the bind account is disabled",
        0x701 => "the bind account has expired",
        0x773 => "the bind account must change its password first",
        0x775 => "the bind account is locked out",
        _ => return None,
    })
}

/// A sentence for an AD error code seen on adds and modifies. `text` (the server's message)
/// tells apart the cases that share a code.
pub fn op_sentence(text: &str) -> Option<&'static str> {
    Some(match win32_code(text)? {
        0x0000_0005 => "the bind account lacks the rights for this change",
        0x0000_001F | 0x0000_0032 => {
            "the domain controller refuses this change (for a password: the connection must be encrypted)"
        }
        0x0000_0056 => "the current password is wrong",
        0x0000_052D => "the password does not meet the domain's policy (length, complexity or history)",
        0x0000_0524 => "the user already exists",
        0x0000_0561 => "the user is not a member of this group",
        0x0000_0562 => "the user is already a member of this group",
        0x0000_2071 if text.contains("userPrincipalName") || text.contains("UPN") => "userPrincipalName already in use",
        0x0000_2071 => "sAMAccountName already in use",
        0x0000_208D => "the object or its parent OU does not exist",
        0x0000_200B => "a value does not have the syntax of its attribute",
        0x0000_2035 => "the domain controller is unwilling to perform this change",
        0x0000_202B => "the object lives in another domain (referral)",
        0x0000_20B1 | 0x0000_20B5 => "the attribute is not allowed for this object class",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_and_enable_flip_only_their_bit() {
        // 512 normal, 66048 = normal + DONT_EXPIRE_PASSWORD, 546 = normal + disabled + PASSWD_NOTREQD
        assert_eq!(with_disabled(512, true), 514);
        assert_eq!(with_disabled(514, false), 512);
        assert_eq!(with_disabled(66048, true), 66050);
        assert_eq!(with_disabled(66050, false), 66048);
        assert_eq!(with_disabled(546, false), 544);
        assert_eq!(with_disabled(514, true), 514);
        assert!(is_disabled(546) && !is_disabled(66048));
    }

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        assert_eq!(unicode_pwd("ab"), vec![b'"', 0, b'a', 0, b'b', 0, b'"', 0]);
        assert_eq!(unicode_pwd("é"), vec![b'"', 0, 0xE9, 0, b'"', 0]);
    }

    #[test]
    fn error_codes_become_sentences() {
        let short = "0000052D: Constraint violation - check_password_restrictions: the password is too short.";
        assert_eq!(win32_code(short), Some(0x52D));
        assert_eq!(
            op_sentence(short),
            Some("the password does not meet the domain's policy (length, complexity or history)")
        );
        let dup = "00002071: samldb: Account name (sAMAccountName) 'jdoe' already in use!";
        assert_eq!(op_sentence(dup), Some("sAMAccountName already in use"));
        assert_eq!(op_sentence("no code here"), None);
        assert_eq!(win32_code("0000XYZ1: x"), None);
        let bind = "80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, data 52e, v4563";
        assert_eq!(bind_sentence(bind), Some("the bind password is wrong"));
        assert_eq!(bind_sentence("... data 775, v1db1"), Some("the bind account is locked out"));
        assert_eq!(bind_sentence("... data 533, v1db1"), Some("the bind account is disabled"));
        assert_eq!(bind_sentence("plain text"), None);
    }
}
