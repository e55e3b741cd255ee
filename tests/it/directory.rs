//! The directory host API against a real Samba AD DC and a real slapd.
