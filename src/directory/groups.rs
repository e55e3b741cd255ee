//! Group membership: add a user to a group, remove it, list a user's groups and a group's
//! members (by ranged retrieval on Active Directory, so large groups are read whole). Groups are
//! named by DN or by name (`cn`, or `sAMAccountName` on AD), looked up under `groups_base`.

use std::collections::{BTreeMap, HashSet};

use ldap3::{Mod, Scope};

use super::audit::{attr, report, Change};
use super::error::DirectoryError;
use super::filter;
use super::handle::{Directory, Entry};
use super::ident::{GroupId, UserId};

/// Values asked for per ranged read: Active Directory's default `MaxValRange`.
const RANGE: u64 = 1500;

impl Directory {
    /// The DN of the group `group` names.
    pub(crate) async fn group_dn(&self, group: &GroupId) -> Result<String, DirectoryError> {
        let found = match group {
            GroupId::Dn(dn) => self.search_raw(dn, Scope::Base, self.schema.group_filter, &["1.1"], None, true).await?,
            GroupId::Name(name) => {
                let names: Vec<String> = self.schema.group_names.iter().map(|a| filter::eq(a, name)).collect();
                let f = filter::and(&[self.schema.group_filter.to_string(), filter::or(&names)]);
                let base = self.groups_base.to_string();
                self.search_raw(&base, Scope::Subtree, &f, &["1.1"], Some(2), false).await?
            }
        };
        match found.len() {
            0 => Err(DirectoryError::NotFound(group.to_string())),
            1 => Ok(found.into_iter().next().map(|e| e.dn).unwrap_or_default()),
            count => Err(DirectoryError::Ambiguous { what: group.to_string(), count }),
        }
    }

    fn dry_group(group: &GroupId) -> String {
        match group {
            GroupId::Dn(dn) => dn.clone(),
            GroupId::Name(n) => format!("group {n}"),
        }
    }

    /// Adds the user to the group. Returns `false` when it already was a member.
    pub async fn add_to_group(&self, user: &UserId, group: &GroupId) -> Result<bool, DirectoryError> {
        self.change_membership(user, group, true).await
    }

    /// Removes the user from the group. Returns `false` when it was not a member.
    pub async fn remove_from_group(&self, user: &UserId, group: &GroupId) -> Result<bool, DirectoryError> {
        self.change_membership(user, group, false).await
    }

    async fn change_membership(&self, user: &UserId, group: &GroupId, add: bool) -> Result<bool, DirectoryError> {
        let (u, g) = (Self::dry_target(user), Self::dry_group(group));
        let (op, description) = match add {
            true => ("add_to_group", format!("would add {u} to {g}")),
            false => ("remove_from_group", format!("would remove {u} from {g}")),
        };
        let attrs = BTreeMap::from([(self.schema.member.to_string(), vec![u.clone()])]);
        if self.plan(op, &g, attrs, description).is_some() {
            return Ok(true);
        }
        let user_dn = self.locate(user, &["1.1"]).await?.dn;
        let group_dn = self.group_dn(group).await?;
        let member = self.schema.member.as_bytes().to_vec();
        let value = HashSet::from([user_dn.clone().into_bytes()]);
        let mods = vec![if add { Mod::Add(member, value) } else { Mod::Delete(member, value) }];
        let what = match add {
            true => format!("add {user_dn} to {group_dn}"),
            false => format!("remove {user_dn} from {group_dn}"),
        };
        let dn = group_dn.as_str();
        let result = self.run(|| what, |mut l| async move { l.modify(dn, mods).await?.success() }).await;
        match result {
            Ok(_) => {
                tracing::info!(directory = %self.name, user = %user_dn, group = %group_dn, add, "Changed group membership.");
                // On the user, as the `memberOf` value it gained or lost (the write itself is
                // to the group's member attribute): the trail of a person shows their access.
                let group = std::slice::from_ref(&group_dn);
                let change = if add { attr("memberOf", &[], group) } else { attr("memberOf", group, &[]) };
                report(Change::made(&self.name, &user_dn, op, vec![change]).detail(format!("group {group_dn}")));
                Ok(true)
            }
            // Servers disagree on how they refuse adding a member twice or removing a
            // non-member (68, 20, 16, 53 with or without an AD code): look instead.
            Err(e @ (DirectoryError::AlreadyExists { .. } | DirectoryError::Rejected { .. })) => {
                if self.is_member(&user_dn, &group_dn).await? == add {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn is_member(&self, user_dn: &str, group_dn: &str) -> Result<bool, DirectoryError> {
        let f = filter::eq(self.schema.member, user_dn);
        Ok(!self.search_raw(group_dn, Scope::Base, &f, &["1.1"], None, true).await?.is_empty())
    }

    /// The DNs of the group's direct members, every one of them, sorted.
    ///
    /// Active Directory returns at most `MaxValRange` values (1,500 by default) of a
    /// multi-valued attribute per read, and the rest only when asked by range (ranged
    /// retrieval, MS-ADTS 3.1.1.3.1.3.3): `member;range=0-1499` answers that slice (or a
    /// shorter one, when the server's limit is lower), the next read starts after the end the
    /// answer names, until an answer whose range ends in `*` (the last slice). A plain read
    /// of `member` would silently stop at the limit. OpenLDAP has no limit and no ranges: its
    /// `member` is read at once.
    pub async fn group_members(&self, group: &GroupId) -> Result<Vec<String>, DirectoryError> {
        if self.is_dry_run() {
            return Ok(Vec::new());
        }
        let group_dn = self.group_dn(group).await?;
        let member = self.schema.member;
        let read = |attr: String| {
            let group_dn = group_dn.clone();
            async move {
                let found = self.search_raw(&group_dn, Scope::Base, "(objectClass=*)", &[&attr], None, false).await?;
                Ok::<_, DirectoryError>(found.into_iter().next().map(|e| e.attributes).unwrap_or_default())
            }
        };
        if self.schema.upn.is_none() {
            let attrs = read(member.to_string()).await?;
            let mut all: Vec<String> =
                attrs.into_iter().filter(|(k, _)| k.eq_ignore_ascii_case(member)).flat_map(|(_, v)| v).collect();
            all.sort();
            return Ok(all);
        }
        read_ranges(member, &group_dn, MAX_MEMBERS, read).await
    }

    /// The groups the user is a direct member of (`dn`, `cn`, `description`, and
    /// `sAMAccountName` on AD), sorted by DN.
    pub async fn groups_of(&self, user: &UserId) -> Result<Vec<Entry>, DirectoryError> {
        if self.is_dry_run() {
            return Ok(Vec::new());
        }
        let user_dn = self.locate(user, &["1.1"]).await?.dn;
        let f = filter::and(&[self.schema.group_filter.to_string(), filter::eq(self.schema.member, &user_dn)]);
        let attrs: Vec<&str> =
            ["cn", "description"].into_iter().chain(self.schema.upn.map(|_| "sAMAccountName")).collect();
        let mut groups = self.search_raw(&self.base_text, Scope::Subtree, &f, &attrs, None, false).await?;
        groups.sort_by(|a, b| a.dn.cmp(&b.dn));
        Ok(groups)
    }
}

/// Reads the values of `member` by ranges (see [`Directory::group_members`]) with `read`,
/// which reads one attribute description of the group: at most `max` values, each read
/// moving forward, sorted and without duplicates.
async fn read_ranges<F, Fut>(member: &str, group_dn: &str, max: usize, read: F) -> Result<Vec<String>, DirectoryError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<std::collections::BTreeMap<String, Vec<String>>, DirectoryError>>,
{
    let mut all = Vec::new();
    let mut start: u64 = 0;
    loop {
        let asked = format!("{member};range={start}-{}", start + RANGE - 1);
        let attrs = read(asked.clone()).await?;
        let mut slice = None;
        let mut plain = None;
        for (name, values) in attrs {
            match name.split_once(';') {
                Some((attr, options)) if attr.eq_ignore_ascii_case(member) => {
                    let lower = options.to_ascii_lowercase();
                    if let Some(range) = lower.strip_prefix("range=") {
                        slice = Some((range.to_string(), values));
                    }
                }
                None if name.eq_ignore_ascii_case(member) => plain = Some(values),
                _ => {}
            }
        }
        let Some((range, values)) = slice else {
            // A server that ignores the range option answers the whole attribute; no
            // attribute at all: no members (or none past `start`, when the last slice
            // ended exactly at a range boundary).
            all.extend(plain.unwrap_or_default());
            break;
        };
        let empty = values.is_empty();
        all.extend(values);
        if all.len() > max {
            return Err(DirectoryError::Rejected {
                op: format!("read the members of {group_dn}"),
                code: 0,
                reason: format!("the group has more than {max} members, more than a run may read"),
            });
        }
        match next_start(start, &range) {
            // A slice that is not the last must carry values: a server that answers empty
            // slices would otherwise be asked again and again until the run's deadline.
            Ok(Some(_)) if empty => {
                return Err(DirectoryError::Rejected {
                    op: format!("read the members of {group_dn}"),
                    code: 0,
                    reason: format!("the server answered an empty range `{range}` that is not the last to `{asked}`"),
                })
            }
            Ok(Some(next)) => start = next,
            Ok(None) => break,
            Err(()) => {
                return Err(DirectoryError::Rejected {
                    op: format!("read the members of {group_dn}"),
                    code: 0,
                    reason: format!("the server answered the range `{range}` to `{asked}`"),
                })
            }
        }
    }
    all.sort();
    all.dedup();
    Ok(all)
}

/// The most members a group read returns: a larger answer is an error, not memory without
/// bound.
const MAX_MEMBERS: usize = 1_000_000;

/// Where the next ranged read starts after a slice `range` (`"0-1499"`, or `"1500-*"` for
/// the last: `None`) of a read that started at `start`. A slice that does not start there, or
/// ends before it, is an error: each read must move forward, so the loop ends whatever the
/// server says.
fn next_start(start: u64, range: &str) -> Result<Option<u64>, ()> {
    let (from, to) = range.split_once('-').ok_or(())?;
    if from.parse::<u64>().map_err(|_| ())? != start {
        return Err(());
    }
    match to {
        "*" => Ok(None),
        end => {
            let end: u64 = end.parse().map_err(|_| ())?;
            if end < start {
                return Err(());
            }
            end.checked_add(1).map(Some).ok_or(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::{next_start, read_ranges, DirectoryError};

    /// The answers a scripted server has left: each a range and how many values it carries.
    type Answers = Mutex<std::vec::IntoIter<(String, usize)>>;

    /// A server answering each ranged read with the next of `slices` (`(range, values)`), and
    /// the reads it was asked for.
    fn server(slices: Vec<(&str, usize)>) -> (Mutex<Vec<String>>, Answers) {
        let answers: Vec<(String, usize)> = slices.into_iter().map(|(r, n)| (r.to_string(), n)).collect();
        (Mutex::new(Vec::new()), Mutex::new(answers.into_iter()))
    }

    async fn read_from(
        asked: &Mutex<Vec<String>>,
        answers: &Answers,
        max: usize,
    ) -> Result<Vec<String>, DirectoryError> {
        let read = |attr: String| {
            asked.lock().unwrap().push(attr);
            let next = answers.lock().unwrap().next();
            async move {
                let mut attrs = BTreeMap::new();
                if let Some((range, n)) = next {
                    let from: usize = range.split('-').next().unwrap().parse().unwrap_or(0);
                    attrs.insert(
                        format!("member;range={range}"),
                        (from..from + n).map(|i| format!("CN=u{i}")).collect(),
                    );
                }
                Ok(attrs)
            }
        };
        read_ranges("member", "CN=g", max, read).await
    }

    #[tokio::test]
    async fn ranged_reads_follow_the_slices_to_the_last() {
        let (asked, answers) = server(vec![("0-1499", 1500), ("1500-2999", 1500), ("3000-*", 20)]);
        let all = read_from(&asked, &answers, 1_000_000).await.unwrap();
        assert_eq!(all.len(), 3020);
        assert_eq!(*asked.lock().unwrap(), ["member;range=0-1499", "member;range=1500-2999", "member;range=3000-4499"]);
    }

    #[tokio::test]
    async fn a_server_that_answers_empty_or_endless_slices_is_an_error_not_a_loop() {
        // Empty slices that are not the last: once, then an error.
        let (asked, answers) = server(vec![("0-1499", 0), ("0-1499", 0), ("0-1499", 0)]);
        let e = read_from(&asked, &answers, 1_000_000).await.unwrap_err();
        assert!(e.to_string().contains("empty range"), "{e}");
        assert_eq!(asked.lock().unwrap().len(), 1);
        // Slices without end: stopped at the most a read may return.
        let endless: Vec<(String, usize)> = (0..100).map(|i| (format!("{}-{}", i * 10, i * 10 + 9), 10)).collect();
        let (asked, answers) = (Mutex::new(Vec::new()), Mutex::new(endless.into_iter()));
        let e = read_from(&asked, &answers, 55).await.unwrap_err();
        assert!(e.to_string().contains("more than 55 members"), "{e}");
        assert_eq!(asked.lock().unwrap().len(), 6);
    }

    #[test]
    fn ranged_reads_move_forward_or_fail() {
        assert_eq!(next_start(0, "0-1499"), Ok(Some(1500)));
        assert_eq!(next_start(1500, "1500-2999"), Ok(Some(3000)));
        assert_eq!(next_start(0, "0-999"), Ok(Some(1000)), "a server with a lower MaxValRange");
        assert_eq!(next_start(4500, "4500-*"), Ok(None));
        assert_eq!(next_start(0, "0-*"), Ok(None));
        for hostile in ["", "0", "1-1499", "0-x", "x-*", "1500-1499", "-1-5", "0-18446744073709551615"] {
            let start = if hostile.starts_with("1500") { 1500 } else { 0 };
            assert_eq!(next_start(start, hostile), Err(()), "{hostile:?}");
        }
    }
}
