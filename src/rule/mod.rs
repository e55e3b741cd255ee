//! Rules: one trigger per TOML file, compiled at load time into an indexed [`RuleSet`].
//!
//! Matching is native Rust. Rules are grouped by entity; within an entity, each rule whose
//! conditions must all hold and that has an `equals` condition is filed under that
//! condition's field and value, so an event looks up its candidates with one hash probe per
//! indexed field instead of evaluating every rule.

pub mod condition;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use smallvec::SmallVec;

use crate::de::toml_to_json;
use crate::diag::Diagnostic;
use crate::record::Event;
use condition::Resolved;
pub use condition::{Condition, FieldRef, Key};

/// A rule file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: toml::Spanned<String>,
    pub entity: toml::Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub conditions: Vec<toml::Spanned<ConditionConfig>>,
    #[serde(default, rename = "match")]
    pub match_: Option<toml::Spanned<String>>,
    #[serde(default)]
    pub when: Option<toml::Spanned<String>>,
    pub script: toml::Spanned<String>,
    #[serde(default = "default_priority")]
    pub priority: i64,
    #[serde(default = "crate::de::default_true")]
    pub enabled: bool,
    /// Passed to the script as `params`.
    #[serde(default)]
    pub params: toml::Table,
    /// `[notify.NAME]` channels told when a run of this rule fails or is dead.
    #[serde(default)]
    pub notify_on_failure: Vec<toml::Spanned<String>>,
}

fn default_priority() -> i64 {
    100
}

/// `{ field, op, value }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    pub field: toml::Spanned<String>,
    pub op: toml::Spanned<String>,
    #[serde(default)]
    pub value: Option<toml::Spanned<toml::Value>>,
}

/// Whether all conditions must hold, or any one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    All,
    Any,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub entity: String,
    pub conditions: Vec<Condition>,
    pub match_: Match,
    /// The `when` guard, as written, compiled by the script engine.
    pub when: Option<(String, Arc<rhai::AST>)>,
    /// The script's path relative to the scripts folder.
    pub script: String,
    pub priority: i64,
    pub enabled: bool,
    pub params: serde_json::Map<String, Value>,
    /// Notification channels told when a run fails or is dead.
    pub notify_on_failure: Vec<String>,
    /// The file it came from.
    pub path: PathBuf,
}

impl Rule {
    /// Whether the native conditions hold (the `when` guard is the dispatcher's).
    pub fn matches(&self, event: &Event) -> bool {
        if event.record.entity != self.entity {
            return false;
        }
        match self.match_ {
            Match::All => self.conditions.iter().all(|c| c.eval(event)),
            Match::Any => self.conditions.is_empty() || self.conditions.iter().any(|c| c.eval(event)),
        }
    }
}

/// Compiles a `when` expression, or gives Rhai's message, line and column.
pub type GuardCompiler<'a> = &'a dyn Fn(&str) -> Result<rhai::AST, (String, usize, usize)>;

/// Parses and checks one rule file. `compile_when` compiles a `when` expression, returning
/// Rhai's message and position on failure.
pub fn compile_rule(path: &Path, source: &str, compile_when: GuardCompiler) -> Result<Rule, Vec<Diagnostic>> {
    let cfg: RuleConfig =
        toml::from_str(source).map_err(|e| vec![Diagnostic::span(path, source, e.span(), e.message().to_string())])?;
    let mut diags = Vec::new();
    let mut err =
        |span: std::ops::Range<usize>, msg: String| diags.push(Diagnostic::span(path, source, Some(span), msg));

    if cfg.name.get_ref().trim().is_empty() {
        err(cfg.name.span(), "a rule needs a name".into());
    }
    if cfg.entity.get_ref().trim().is_empty() {
        err(cfg.entity.span(), "a rule needs an entity".into());
    }
    let match_ = match cfg.match_.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("all", _)) => Match::All,
        Some(("any", _)) => Match::Any,
        Some((other, span)) => {
            err(span, format!("`match` is \"all\" or \"any\", not {other:?}"));
            Match::All
        }
    };
    let mut conditions = Vec::new();
    for c in &cfg.conditions {
        let c = c.get_ref();
        let value = match &c.value {
            Some(v) => match toml_to_json(v.get_ref()) {
                Ok(v) => Some(v),
                Err(m) => {
                    err(v.span(), m);
                    continue;
                }
            },
            None => None,
        };
        match Condition::compile(c.field.get_ref(), c.op.get_ref(), value) {
            Ok(cond) => conditions.push(cond),
            Err((part, msg)) => {
                let span = match part {
                    "field" => c.field.span(),
                    "value" => c.value.as_ref().map(|v| v.span()).unwrap_or(c.op.span()),
                    _ => c.op.span(),
                };
                err(span, msg);
            }
        }
    }
    let when = match &cfg.when {
        Some(w) => match compile_when(w.get_ref()) {
            Ok(ast) => Some((w.get_ref().clone(), Arc::new(ast))),
            Err((msg, line, col)) => {
                // Point into the expression: its text starts one past the opening quote.
                let (l0, c0) = crate::diag::line_col(source, w.span().start + 1);
                let (line, col) = if line <= 1 { (l0, c0 + col.saturating_sub(1)) } else { (l0 + line - 1, col) };
                diags.push(Diagnostic::at(path, line, col, format!("`when` does not compile: {msg}")));
                None
            }
        },
        None => None,
    };
    let params = match toml_to_json(&toml::Value::Table(cfg.params.clone())) {
        Ok(Value::Object(m)) => m,
        _ => Default::default(),
    };
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(Rule {
        name: cfg.name.into_inner(),
        entity: cfg.entity.into_inner(),
        conditions,
        match_,
        when,
        script: cfg.script.into_inner(),
        priority: cfg.priority,
        enabled: cfg.enabled,
        params,
        notify_on_failure: cfg.notify_on_failure.into_iter().map(|n| n.into_inner()).collect(),
        path: path.to_path_buf(),
    })
}

/// A rule the index leads to, with the conditions the lookups on the way have satisfied
/// already (bit `i` for condition `i`; conditions past the 64th are always evaluated).
#[derive(Debug, Clone, Copy)]
struct Found {
    rank: u32,
    satisfied: u64,
}

/// The bit of condition `at` in [`Found::satisfied`].
fn bit(at: usize) -> u64 {
    if at < 64 {
        1 << at
    } else {
        0
    }
}

/// The rules one indexed value leads to: those with nothing more to look up, and, where many
/// share the value, a further index on a second field that splits them (`Department` then
/// `event`), so an event evaluates only the few rules its values can match.
#[derive(Debug, Default)]
struct Node {
    found: SmallVec<[Found; 2]>,
    next: Option<Box<(FieldRef, ValueIndex)>>,
}

/// A node with more rules than this is split on a further field.
const SPLIT_ABOVE: usize = 4;
/// Lookups on the way to a rule, at most.
const MAX_LEVELS: usize = 3;

impl Node {
    /// Splits this node's rules on the field with the most distinct wanted values among their
    /// conditions not satisfied yet, when they are many and such a field splits them.
    fn split(&mut self, rules: &[Arc<Rule>], ranked: &[usize], level: usize) {
        if self.found.len() <= SPLIT_ABOVE || level >= MAX_LEVELS {
            return;
        }
        let rule_of = |f: &Found| &rules[ranked[f.rank as usize]];
        // In order of first appearance, so that ties are decided the same way every time.
        let mut distinct: Vec<(&FieldRef, std::collections::HashSet<Key>)> = Vec::new();
        for f in &self.found {
            for (at, c) in rule_of(f).conditions.iter().enumerate() {
                let Some(key) = c.index_key().filter(|_| f.satisfied & bit(at) == 0) else { continue };
                match distinct.iter_mut().find(|(field, _)| **field == c.field) {
                    Some((_, keys)) => drop(keys.insert(key)),
                    None => distinct.push((&c.field, [key].into())),
                }
            }
        }
        let Some((field, _)) = distinct.iter().rev().max_by_key(|(_, keys)| keys.len()).filter(|(_, k)| k.len() > 1)
        else {
            return;
        };
        let field = (*field).clone();
        let mut index = ValueIndex::default();
        let mut stay = SmallVec::new();
        for f in self.found.drain(..) {
            let conditions = &rules[ranked[f.rank as usize]].conditions;
            let key = conditions.iter().enumerate().find_map(|(at, c)| {
                (c.field == field && f.satisfied & bit(at) == 0).then(|| c.index_key().map(|k| (at, k))).flatten()
            });
            match key {
                Some((at, key)) => index.node(key).found.push(Found { rank: f.rank, satisfied: f.satisfied | bit(at) }),
                None => stay.push(f),
            }
        }
        for node in index.nodes_mut() {
            node.split(rules, ranked, level + 1);
        }
        self.found = stay;
        self.next = Some(Box::new((field, index)));
    }

    /// The rules this node leads the event to.
    fn collect(&self, event: &Event, out: &mut SmallVec<[Found; 8]>) {
        out.extend_from_slice(&self.found);
        if let Some((field, index)) = self.next.as_deref() {
            if let Some(node) = field.resolve(event).as_ref().and_then(|v| index.get(v)) {
                node.collect(event, out);
            }
        }
    }
}

/// An indexed field's rules by the value their key condition wants. Strings are looked up
/// by `&str` (no allocation per event), with a fast hash: the keys are the rules' own values,
/// so an event cannot grow the map, only look it up.
#[derive(Debug, Default)]
struct ValueIndex {
    strs: foldhash::HashMap<String, Node>,
    nums: foldhash::HashMap<u64, Node>,
    bools: [Node; 2],
}

impl ValueIndex {
    fn node(&mut self, key: Key) -> &mut Node {
        match key {
            Key::Str(s) => self.strs.entry(s).or_default(),
            Key::Num(n) => self.nums.entry(n).or_default(),
            Key::Bool(b) => &mut self.bools[b as usize],
        }
    }

    fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.strs.values_mut().chain(self.nums.values_mut()).chain(self.bools.iter_mut())
    }

    /// The node of the rules whose key condition the value satisfies.
    fn get(&self, v: &Resolved<'_>) -> Option<&Node> {
        match v {
            Resolved::Str(s) => self.strs.get(*s),
            Resolved::Json(Value::String(s)) => self.strs.get(s.as_str()),
            Resolved::Bool(b) | Resolved::Json(Value::Bool(b)) => Some(&self.bools[*b as usize]),
            Resolved::Json(v) => match Key::of(v)? {
                Key::Num(n) => self.nums.get(&n),
                _ => None,
            },
        }
    }
}

/// The rules of one entity, with their index.
#[derive(Debug, Default)]
struct EntityRules {
    /// Indexed fields: field -> value -> the rules whose key condition it is (split further
    /// where many share a value). A rule's rank is its position in `ranked` (priority order).
    index: Vec<(FieldRef, ValueIndex)>,
    /// Rules without an indexable condition: always evaluated.
    scan: SmallVec<[Found; 2]>,
    /// Rule indices (into `RuleSet::rules`) sorted by priority.
    ranked: Vec<usize>,
}

impl EntityRules {
    /// The rules the index leads the event to, in priority order.
    fn candidates(&self, event: &Event) -> SmallVec<[Found; 8]> {
        let mut out: SmallVec<[Found; 8]> = SmallVec::from_slice(&self.scan);
        for (field, index) in &self.index {
            if let Some(node) = field.resolve(event).as_ref().and_then(|v| index.get(v)) {
                node.collect(event, &mut out);
            }
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|f| f.rank);
        }
        out
    }
}

/// All enabled rules, compiled and indexed.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    by_entity: foldhash::HashMap<String, EntityRules>,
}

/// The rules an event matches, in priority order (borrowed from the set; rarely more than a
/// few, so no allocation).
pub type Matching<'a> = SmallVec<[&'a Arc<Rule>; 4]>;

impl RuleSet {
    /// Builds the index. Disabled rules are kept (for `tripline test`) but never match.
    pub fn new(mut rules: Vec<Rule>) -> RuleSet {
        rules.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let rules: Vec<Arc<Rule>> = rules.into_iter().map(Arc::new).collect();
        let mut grouped: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            if r.enabled {
                grouped.entry(r.entity.clone()).or_default().push(i);
            }
        }
        let mut by_entity = foldhash::HashMap::default();
        for (entity, ranked) in grouped {
            // Prefer the field with the most distinct values among this entity's rules: it
            // splits them most finely (Department beats Created).
            let mut distinct: HashMap<&FieldRef, std::collections::HashSet<Key>> = HashMap::new();
            for &i in &ranked {
                if rules[i].match_ == Match::All {
                    for c in &rules[i].conditions {
                        if let Some(k) = c.index_key() {
                            distinct.entry(&c.field).or_default().insert(k);
                        }
                    }
                }
            }
            let mut er = EntityRules::default();
            for (rank, &i) in ranked.iter().enumerate() {
                let rule = &rules[i];
                let key_condition = (rule.match_ == Match::All)
                    .then(|| {
                        rule.conditions
                            .iter()
                            .enumerate()
                            .filter_map(|(at, c)| c.index_key().map(|k| (at, c, k)))
                            .max_by_key(|(_, c, _)| distinct.get(&c.field).map_or(0, |s| s.len()))
                    })
                    .flatten();
                let rank = rank as u32;
                match key_condition {
                    Some((at, c, key)) => {
                        let slot = match er.index.iter().position(|(f, _)| *f == c.field) {
                            Some(p) => p,
                            None => {
                                er.index.push((c.field.clone(), ValueIndex::default()));
                                er.index.len() - 1
                            }
                        };
                        er.index[slot].1.node(key).found.push(Found { rank, satisfied: bit(at) });
                    }
                    None => er.scan.push(Found { rank, satisfied: 0 }),
                }
            }
            for (_, index) in &mut er.index {
                for node in index.nodes_mut() {
                    node.split(&rules, &ranked, 1);
                }
            }
            er.ranked = ranked;
            by_entity.insert(entity, er);
        }
        RuleSet { rules, by_entity }
    }

    /// Every rule, in priority order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// A rule by its name, or else by its file: the file name with or without `.toml`
    /// (`process_flexhr_user`), or the end of its path (`rules/process_flexhr_user.toml`).
    pub fn find(&self, name_or_file: &str) -> Option<&Arc<Rule>> {
        self.get(name_or_file).or_else(|| {
            let wanted = std::path::Path::new(name_or_file);
            self.rules.iter().find(|r| {
                r.path.file_stem().is_some_and(|s| s == name_or_file)
                    || (wanted.components().count() > 0 && r.path.ends_with(wanted))
            })
        })
    }

    /// The enabled rules whose conditions hold for the event, in priority order.
    pub fn matching(&self, event: &Event) -> Matching<'_> {
        let Some(er) = self.by_entity.get(event.record.entity.as_str()) else { return Matching::new() };
        er.candidates(event)
            .into_iter()
            .filter_map(|f| {
                let rule = &self.rules[er.ranked[f.rank as usize]];
                let holds = match rule.match_ {
                    Match::All => {
                        rule.conditions.iter().enumerate().all(|(at, c)| f.satisfied & bit(at) != 0 || c.eval(event))
                    }
                    Match::Any => rule.conditions.is_empty() || rule.conditions.iter().any(|c| c.eval(event)),
                };
                holds.then_some(rule)
            })
            .collect()
    }

    /// How many rules the index would evaluate for an event (for tests of the index).
    pub fn candidates(&self, event: &Event) -> usize {
        self.by_entity.get(&event.record.entity).map_or(0, |er| er.candidates(event).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventKind, Record};
    use serde_json::json;

    fn rule(name: &str, priority: i64, conds: &[(&str, &str, Value)], match_: Match) -> Rule {
        Rule {
            name: name.into(),
            entity: "ticket".into(),
            conditions: conds.iter().map(|(f, o, v)| Condition::compile(f, o, Some(v.clone())).unwrap()).collect(),
            match_,
            when: None,
            script: "s.rhai".into(),
            priority,
            enabled: true,
            params: Default::default(),
            notify_on_failure: Vec::new(),
            path: PathBuf::from("r.toml"),
        }
    }

    fn ev(fields: Value) -> Event {
        Event {
            id: 1,
            kind: EventKind::Created,
            record: Record::new("ticket", fields.as_object().unwrap().clone()),
            previous: None,
            depth: 0,
            created_at: chrono::Utc::now(),
            claims: 1,
            waits_for_nothing: false,
        }
    }

    #[test]
    fn index_narrows_candidates_and_keeps_priority_order() {
        let mut rules = Vec::new();
        for i in 0..200 {
            rules.push(rule(
                &format!("r{i}"),
                200 - i,
                &[("Created", "equals", json!(true)), ("Dept", "equals", json!(format!("D{i}")))],
                Match::All,
            ));
        }
        rules.push(rule("any", 50, &[("Dept", "equals", json!("D7")), ("VIP", "equals", json!(true))], Match::Any));
        rules.push(rule("first", 1, &[("Dept", "equals", json!("D7"))], Match::All));
        let set = RuleSet::new(rules);
        let e = ev(json!({"Dept": "D7"}));
        assert_eq!(set.candidates(&e), 3, "one indexed rule per Dept value plus the `any` rule");
        let names: Vec<_> = set.matching(&e).iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["first", "any", "r7"]);
        assert!(set.matching(&ev(json!({"Dept": "nope"}))).is_empty());
        assert_eq!(set.matching(&ev(json!({"VIP": true})))[0].name, "any");
    }

    #[test]
    fn many_rules_sharing_a_value_are_split_on_a_second_field() {
        // 10 event kinds x 20 departments: Department is looked up first (more values), then
        // the event kind splits each department's 10 rules; rules without the second key stay.
        let mut rules = Vec::new();
        for d in 0..20 {
            for k in ["created", "updated", "deleted", "a", "b", "c", "d", "e", "f", "g"] {
                rules.push(rule(
                    &format!("{k}-{d}"),
                    0,
                    &[("Event", "equals", json!(k)), ("Department", "equals", json!(format!("D{d}")))],
                    Match::All,
                ));
            }
        }
        rules.push(rule("dept-only", 0, &[("Department", "equals", json!("D3"))], Match::All));
        rules.push(rule("dept-big", 0, &[("Department", "equals", json!("D3")), ("Size", "gt", json!(5))], Match::All));
        let set = RuleSet::new(rules);
        let e = ev(json!({"Department": "D3", "Size": 9}));
        assert_eq!(set.candidates(&e), 3, "the created-D3 rule and the two without an event condition");
        let mut names: Vec<_> = set.matching(&e).iter().map(|r| r.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["created-3", "dept-big", "dept-only"]);
        assert_eq!(set.matching(&ev(json!({"Department": "D3", "Size": 1}))).len(), 2);
        assert!(set.matching(&ev(json!({"Department": "D99"}))).is_empty());
        // A value of the wrong type finds nothing and evaluates nothing of the split.
        assert_eq!(set.candidates(&ev(json!({"Department": 3}))), 0);
    }

    #[test]
    fn disabled_rules_never_match() {
        let mut r = rule("off", 1, &[("Dept", "equals", json!("IT"))], Match::All);
        r.enabled = false;
        let set = RuleSet::new(vec![r]);
        assert!(set.matching(&ev(json!({"Dept": "IT"}))).is_empty());
        assert!(set.get("off").is_some());
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: rule files, whatever their text, give a rule or diagnostics, never a
    //! panic; and rules that compile evaluate any record without panicking.
    use super::*;
    use proptest::prelude::*;

    fn compile(src: &str) -> Result<Rule, Vec<Diagnostic>> {
        let engine = crate::script::ScriptEngine::new(&crate::script::LimitsConfig::default(), &[]);
        compile_rule(Path::new("fuzz.toml"), src, &|w| engine.compile_guard(w))
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-c.]{1,3}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    use crate::de::toml_literal;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_text_is_a_rule_or_diagnostics(src in "\\PC{0,200}") {
            let _ = compile(&src);
        }

        #[test]
        fn structured_rules_never_panic(
            field in "[A-Za-z.]{0,10}|Created|Updated|Event|Entity",
            op in "[a-z_]{0,12}|equals|in|matches|gt|changed|exists",
            value in proptest::option::of(toml_literal()),
            when in proptest::option::of("[a-z .=<>!&|\"0-9]{0,20}"),
            record in json_value(),
        ) {
            let value = value.map(|v| format!(", value = {v}")).unwrap_or_default();
            let when = when.map(|w| format!("when = {w:?}\n")).unwrap_or_default();
            let src = format!(
                "name = \"p\"\nentity = \"t\"\nscript = \"s.rhai\"\n{when}conditions = [{{ field = {field:?}, op = {op:?}{value} }}]\n"
            );
            if let Ok(rule) = compile(&src) {
                let fields = match record { serde_json::Value::Object(m) => m, other => [("v".to_string(), other)].into_iter().collect() };
                let event = Event {
                    id: 1,
                    kind: crate::record::EventKind::Updated,
                    record: crate::record::Record::new("t", fields.clone()),
                    previous: Some(crate::record::Record::new("t", Default::default())),
                    depth: 0,
                    created_at: chrono::Utc::now(), claims: 1, waits_for_nothing: false,
                };
                let set = RuleSet::new(vec![rule]);
                let _ = set.matching(&event);
            }
        }
    }
}
