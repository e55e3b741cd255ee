//! What a script can call and see, read from the engine's own metadata, never from a list of
//! our own: the host API as data ([`ScriptEngine::host_api`], which the README's tables are
//! checked against) and as Rhai definition files ([`ScriptEngine::definitions`], `tripline
//! definitions DIR`) that editors read for completion and hover docs.
//!
//! The definition files are the ones Rhai writes (`Engine::definitions`: the built-in
//! functions and operators, and every registered function with its doc comments, the host
//! API's among them) plus `__scope__.d.rhai`, the variables a script starts with. Rhai's own
//! scope file is written from live values; ours is written from [`SCOPE`], which also names the
//! variables the checks know (`PREDECLARED`), so the two cannot differ.

use std::path::{Path, PathBuf};

use rhai::Engine;

use super::ScriptEngine;

/// A variable of a script's scope: its name, its type as definition files spell it, and what it
/// holds.
#[derive(Debug, Clone, Copy)]
pub struct ScopeVar {
    pub name: &'static str,
    pub ty: &'static str,
    pub doc: &'static str,
}

/// The variables every script starts with (see `ScriptEngine::run`), in the order they are
/// pushed.
pub const SCOPE: [ScopeVar; 6] = [
    ScopeVar {
        name: "record",
        ty: "?",
        doc: "The record as a map: its fields as top-level keys (`record.Source`), plus `id`, `entity` and \
              `status` (\"open\" / \"closed\"); `()` in a job.",
    },
    ScopeVar { name: "previous", ty: "?", doc: "The record before an update, else `()`." },
    ScopeVar {
        name: "event",
        ty: "String",
        doc: "\"created\", \"updated\", \"deleted\" or a custom name; for jobs \"schedule\" or \"manual\".",
    },
    ScopeVar { name: "rule", ty: "String", doc: "The rule's name (`job:NAME` for jobs)." },
    ScopeVar { name: "params", ty: "Map", doc: "The rule's or job's `params`." },
    ScopeVar {
        name: "api",
        ty: "Api",
        doc: "The host object: records, logging, time, state, directories, connections.",
    },
];

/// One host function or property as scripts call it: a function whose first parameter is one
/// of the host's types (`Api`, `Directory`, `Connection`, `HostError`, or an embedder's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFunction {
    /// The type it is called on, as scripts see it (`Api`, `Directory`).
    pub receiver: String,
    /// The receiver's parameter name in the definitions (`api`, `d`).
    pub receiver_param: String,
    /// The name scripts call (`create_user`), or the property read (`base_dn`).
    pub name: String,
    /// A property (`ad.base_dn`), not a method call.
    pub property: bool,
    /// The parameters after the receiver, as `name: Type`.
    pub params: Vec<String>,
    /// The doc comment, without its `///`.
    pub doc: String,
}

impl HostFunction {
    /// What tells it from every other: its receiver, its name and its number of arguments
    /// (`None` for a property).
    pub fn key(&self) -> (String, String, Option<usize>) {
        (self.receiver.clone(), self.name.clone(), (!self.property).then_some(self.params.len()))
    }

    /// How a call reads in a script, with `receiver` for the value it is called on:
    /// `api.close(record, text)`, `ad.base_dn`.
    pub fn call(&self, receiver: &str) -> String {
        if self.property {
            return format!("{receiver}.{}", self.name);
        }
        let names: Vec<&str> = self.params.iter().map(|p| p.split(':').next().unwrap_or(p).trim()).collect();
        format!("{receiver}.{}({})", self.name, names.join(", "))
    }
}

/// Functions on host types that are how Rhai prints a value (`${hr}`, `print(e)`), not calls a
/// script makes by name: left out of [`ScriptEngine::host_api`].
const PRINTING: [&str; 2] = ["to_string", "to_debug"];

impl ScriptEngine {
    /// Every function and property the engine has on a host type (its first parameter is not
    /// one of Rhai's own types), printing functions left out, sorted by receiver, name and
    /// number of parameters.
    pub fn host_api(&self) -> Vec<HostFunction> {
        host_api(self.engine())
    }

    /// The definition files of this engine, as `(file name, text)`: Rhai's (built-ins,
    /// operators, every registered function with its docs) and `__scope__.d.rhai`.
    pub fn definitions(&self) -> Vec<(String, String)> {
        // A few of Rhai's standard functions are registered without metadata (`to_int` of
        // each number type), and Rhai writes them with an empty return type, `-> ;`, which is
        // not a definition: their type is not known, `?`.
        let mut files: Vec<(String, String)> = self
            .engine()
            .definitions()
            .iter_files()
            .map(|(name, text)| (name, text.replace(") -> ;", ") -> ?;")))
            .collect();
        files.push(("__scope__.d.rhai".into(), scope_definitions()));
        files
    }

    /// Writes [`ScriptEngine::definitions`] into `dir` (created if needed; files of the same
    /// names are replaced) and returns the paths written.
    pub fn write_definitions(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for (name, text) in self.definitions() {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            written.push(path);
        }
        Ok(written)
    }
}

fn host_api(engine: &Engine) -> Vec<HostFunction> {
    let mut out = engine.collect_fn_metadata(
        None,
        |f| {
            let m = f.metadata;
            let first = *m.param_types.first()?;
            if m.num_params == 0 || super::lint::is_builtin(first) || PRINTING.contains(&m.name.as_str()) {
                return None;
            }
            let first_info = m.params_info.first()?;
            let receiver = super::lint::param_type_name(first_info).to_string();
            let receiver_param = first_info.split(':').next().unwrap_or("_").trim().to_string();
            let (name, property) = match m.name.strip_prefix("get$") {
                Some(p) => (p.to_string(), true),
                None => (m.name.to_string(), false),
            };
            let params = m.params_info.iter().skip(1).take(m.num_params - 1).map(|p| param_text(p, engine)).collect();
            let doc = m.comments.iter().map(|c| doc_line(c)).collect::<Vec<_>>().join("\n");
            Some(HostFunction { receiver, receiver_param, name, property, params, doc })
        },
        false,
    );
    out.sort_by(|a, b| (&a.receiver, &a.name, a.params.len()).cmp(&(&b.receiver, &b.name, b.params.len())));
    out.dedup();
    out
}

/// A doc comment's line without its `///`.
fn doc_line(comment: &str) -> String {
    // One entry of the metadata may hold several `///` lines.
    comment
        .lines()
        .map(|line| {
            let text = line.trim_start().trim_start_matches('/');
            text.strip_prefix(' ').unwrap_or(text)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A parameter's metadata (`"entity: &str"`) as Rhai's definitions spell it (`entity:
/// string`: Rhai's short names, `?` for any value).
fn param_text(info: &str, engine: &Engine) -> String {
    let (name, ty) = info.split_once(':').unwrap_or(("_", info));
    let ty = match engine.map_type_name(super::lint::param_type_name(ty)) {
        "Dynamic" => "?",
        "i64" => "int",
        "f64" => "float",
        other => other,
    };
    format!("{}: {ty}", name.trim())
}

/// `__scope__.d.rhai`: the header Rhai writes, then each variable of [`SCOPE`] with its doc.
fn scope_definitions() -> String {
    let items: Vec<String> = SCOPE.iter().map(|v| format!("/// {}\nlet {}: {};", v.doc, v.name, v.ty)).collect();
    format!("module static;\n\n{}\n", items.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::LimitsConfig;

    fn engine() -> ScriptEngine {
        ScriptEngine::new(&LimitsConfig::default(), &[])
    }

    /// The names a rule author cannot do without, written by hand: the metadata could lose one
    /// (a plugin module not registered) and still agree with itself.
    const IMPORTANT: &[(&str, &str)] = &[
        ("Api", "ProcessFlexHrUserOnAD"),
        ("Api", "create"),
        ("Api", "update"),
        ("Api", "find"),
        ("Api", "get"),
        ("Api", "comment"),
        ("Api", "close"),
        ("Api", "info"),
        ("Api", "warn"),
        ("Api", "error"),
        ("Api", "log"),
        ("Api", "retry_later"),
        ("Api", "now"),
        ("Api", "days_ago"),
        ("Api", "state_get"),
        ("Api", "state_set"),
        ("Api", "directory"),
        ("Api", "connection"),
        ("Api", "notify"),
        ("Api", "sanitize"),
        ("Directory", "find_user"),
        ("Directory", "user_exists"),
        ("Directory", "create_user"),
        ("Directory", "update_user"),
        ("Directory", "disable_user"),
        ("Directory", "enable_user"),
        ("Directory", "delete_user"),
        ("Directory", "move_user"),
        ("Directory", "rename_user"),
        ("Directory", "reset_password"),
        ("Directory", "add_to_group"),
        ("Directory", "remove_from_group"),
        ("Directory", "groups_of"),
        ("Directory", "set_manager"),
        ("Directory", "search"),
        ("Directory", "base_dn"),
        ("Connection", "get"),
        ("Connection", "post"),
        ("Connection", "put"),
        ("Connection", "patch"),
        ("Connection", "delete"),
        ("Connection", "get_all"),
        ("HostError", "message"),
        ("HostError", "transient"),
    ];

    /// How a host function's line in `__static__.d.rhai` starts: `fn create(api: Api, ...)`.
    fn definition_start(f: &HostFunction) -> String {
        let receiver = format!("{}: {}", f.receiver_param, f.receiver);
        if f.property {
            return format!("fn get {}({receiver})", f.name);
        }
        let mut params = vec![receiver];
        params.extend(f.params.iter().cloned());
        format!("fn {}({})", f.name, params.join(", "))
    }

    #[test]
    fn the_definitions_hold_every_host_function_with_its_docs() {
        let engine = engine();
        let api = engine.host_api();
        let files = engine.definitions();
        let text = |name: &str| {
            files.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str()).unwrap_or_else(|| panic!("no {name}"))
        };
        let statics = text("__static__.d.rhai");

        // From the hand-written list: each one is in the metadata, and so in the definitions.
        let missing: Vec<String> = IMPORTANT
            .iter()
            .filter(|(t, n)| !api.iter().any(|f| f.receiver == *t && f.name == *n))
            .map(|(t, n)| format!("{t}.{n}"))
            .collect();
        assert!(missing.is_empty(), "not registered: {missing:?}");

        // From the metadata: every host function has a doc comment, and its definition line
        // with the doc right above it.
        let mut wrong = Vec::new();
        for f in &api {
            let start = definition_start(f);
            let Some(at) = statics.find(&start) else {
                wrong.push(format!("{}.{}: no `{start}` in __static__.d.rhai", f.receiver, f.name));
                continue;
            };
            if f.doc.trim().is_empty() {
                wrong.push(format!("{}.{}: no doc comment", f.receiver, f.name));
            }
            let before = &statics[..at];
            let doc_line = f.doc.lines().last().unwrap_or_default();
            if !before.trim_end().ends_with(doc_line.trim_end()) {
                wrong.push(format!("{}.{}: its doc is not above `{start}`", f.receiver, f.name));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert!(api.len() >= 60, "{} host functions", api.len());

        // Some lines in full, as an editor reads them.
        for line in [
            "fn ProcessFlexHrUserOnAD(api: Api, record: ?, directory: string) -> Map;",
            "fn create_user(d: Directory, user: map) -> Map;",
            "fn close(api: Api, record: ?) -> ();",
            "fn get_all(h: Connection, path: string, paging: map) -> Array;",
            "fn directory(api: Api, name: string) -> Directory;",
            "fn get transient(e: HostError) -> bool;",
        ] {
            assert!(statics.contains(line), "no `{line}` in __static__.d.rhai");
        }
        let scope = text("__scope__.d.rhai");
        assert!(scope.starts_with("module static;\n\n"), "{scope}");
        for v in SCOPE {
            assert!(scope.contains(&format!("let {}: {};", v.name, v.ty)), "{scope}");
        }
    }

    #[test]
    fn the_scope_of_the_definitions_is_the_scope_a_script_gets() {
        let names: Vec<&str> = SCOPE.iter().map(|v| v.name).collect();
        assert_eq!(names, crate::script::PREDECLARED);
        let engine = engine();
        let params = serde_json::Map::new();
        let inv =
            crate::script::Invocation { record: None, previous: None, event: "manual", rule: "r", params: &params };
        let mut pushed: Vec<String> = engine.scope(&inv).iter().map(|(name, _, _)| name.to_string()).collect();
        pushed.push("api".into());
        assert_eq!(pushed, names, "ScriptEngine::run pushes `api` after these");
    }

    #[test]
    fn the_readme_tables_list_every_host_function_and_nothing_else() {
        let readme = include_str!("../../README.md");
        let documented = readme_calls(readme);
        assert!(documented.len() >= 40, "the README's host API tables were not found: {documented:?}");
        let api = engine().host_api();
        let registered: std::collections::BTreeSet<(String, String, Option<usize>)> =
            api.iter().map(HostFunction::key).collect();
        let show = |(t, n, args): &(String, String, Option<usize>)| match args {
            Some(a) => format!("{t}.{n} with {a} argument(s)"),
            None => format!("{t}.{n} (property)"),
        };
        let undocumented: Vec<String> = registered.difference(&documented).map(show).collect();
        let unknown: Vec<String> = documented.difference(&registered).map(show).collect();
        // The rows to add, written from the doc comments, for whoever adds a host function.
        let rows: Vec<String> = api
            .iter()
            .filter(|f| !documented.contains(&f.key()))
            .map(|f| {
                let receiver = RECEIVERS.iter().find(|(_, t)| *t == f.receiver).map_or("x", |r| r.0);
                format!("| `{}` | {} |", f.call(receiver), f.doc.replace('\n', " "))
            })
            .collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "the README's host API tables and the engine differ.\nregistered but not in the README: {undocumented:#?}\n\
             in the README but not registered: {unknown:#?}\nrows for what is missing, from the doc comments:\n{}",
            rows.join("\n")
        );

        // The scope table too.
        for v in SCOPE {
            assert!(readme.contains(&format!("| `{}` |", v.name)), "the README's scope table has no `{}`", v.name);
        }
    }

    /// The variable names the README's tables call each host type through.
    const RECEIVERS: [(&str, &str); 4] =
        [("api", "Api"), ("ad", "Directory"), ("hr", "Connection"), ("e", "HostError")];

    /// The calls in the first cell of the README's table rows (`| \`api.close(record, text)\` /
    /// \`api.close(record)\` | ... |`): receiver type, name, and the number of arguments (`None`
    /// for a property).
    fn readme_calls(readme: &str) -> std::collections::BTreeSet<(String, String, Option<usize>)> {
        let mut out = std::collections::BTreeSet::new();
        for line in readme.lines().filter(|l| l.starts_with("| `")) {
            let cell = line.trim_start_matches('|').split(" | ").next().unwrap_or_default();
            for code in cell.split('`').skip(1).step_by(2) {
                let Some((receiver, rest)) = code.split_once('.') else { continue };
                let Some((_, ty)) = RECEIVERS.iter().find(|(r, _)| *r == receiver) else { continue };
                let name_end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                let (name, args) = rest.split_at(name_end);
                let arity = args.strip_prefix('(').and_then(|a| a.strip_suffix(')')).map(count_args);
                out.insert((ty.to_string(), name.to_string(), arity));
            }
        }
        out
    }

    /// The arguments in `a, #{b: 1, c: 2}, [d, e]`: commas outside brackets, plus one.
    fn count_args(args: &str) -> usize {
        if args.trim().is_empty() {
            return 0;
        }
        let mut depth = 0i32;
        let mut n = 1;
        for c in args.chars() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => n += 1,
                _ => {}
            }
        }
        n
    }

    #[test]
    fn the_readme_reader_counts_arguments_and_properties() {
        let calls = readme_calls(
            "| `api.close(record, text)` / `api.close(record)` | x |\n| `ad.search(f, [a, b], #{limit: 1, base: b})` | y |\n\
             | `ad.base_dn` | z |\n| `tripline check` | not a call |\nprose `api.get(id)`\n",
        );
        let expected: std::collections::BTreeSet<(String, String, Option<usize>)> = [
            ("Api", "close", Some(2)),
            ("Api", "close", Some(1)),
            ("Directory", "search", Some(3)),
            ("Directory", "base_dn", None),
        ]
        .into_iter()
        .map(|(t, n, a)| (t.to_string(), n.to_string(), a))
        .collect();
        assert_eq!(calls, expected);
    }

    /// Checks a definition file against the grammar Rhai writes: the `module static;` header,
    /// then `fn` / `op` / `let` / `const` items, each ending with `;`, doc comments between.
    pub(crate) fn check_definition_file(text: &str) -> Result<usize, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        match lines.next() {
            Some(h) if h.starts_with("module ") && h.ends_with(';') && is_ident(&h[7..h.len() - 1]) => {}
            other => return Err(format!("the file does not start with a `module NAME;` header: {other:?}")),
        }
        let code: String = lines.filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let mut items = 0;
        for item in code.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            check_item(item).map_err(|e| format!("`{item}`: {e}"))?;
            items += 1;
        }
        Ok(items)
    }

    fn check_item(item: &str) -> Result<(), String> {
        let item = item.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(rest) = item.strip_prefix("let ").or_else(|| item.strip_prefix("const ")) {
            let (name, ty) = rest.split_once(": ").ok_or("no `: Type`")?;
            return if is_ident(name) && is_type(ty) { Ok(()) } else { Err("not `let NAME: Type`".into()) };
        }
        let (op, rest) = match item.split_once(' ') {
            Some(("fn", rest)) => (false, rest),
            Some(("op", rest)) => (true, rest),
            _ => return Err("not an fn, op, let or const item".into()),
        };
        let open = rest.find('(').ok_or("no parameter list")?;
        let name = rest[..open].trim();
        let name = name.strip_prefix("get ").or_else(|| name.strip_prefix("set ")).unwrap_or(name);
        if !(op && !name.is_empty() || is_ident(name)) {
            return Err(format!("not a function name: {name:?}"));
        }
        let after = &rest[open + 1..];
        let mut depth = 0i32;
        let close = after
            .char_indices()
            .find(|&(_, c)| {
                depth += i32::from(c == '(') - i32::from(c == ')');
                depth < 0
            })
            .map(|(i, _)| i)
            .ok_or("unclosed parameter list")?;
        let (params, ret) = (&after[..close], after[close + 1..].trim());
        if !ret.is_empty() {
            let ty = ret.strip_prefix("-> ").ok_or("no `-> Type`")?;
            if !is_type(ty) {
                return Err(format!("not a type: {ty:?}"));
            }
        }
        for p in split_top(params).into_iter().filter(|p| !p.is_empty()) {
            let ok = if op {
                is_type(p)
            } else {
                p.split_once(": ").is_some_and(|(n, t)| is_ident(n.trim_start_matches("...")) && is_type(t))
            };
            if !ok {
                return Err(format!("not a parameter: {p:?}"));
            }
        }
        Ok(())
    }

    /// Splits at commas outside `<>` and `()`.
    fn split_top(s: &str) -> Vec<&str> {
        let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
        for (i, c) in s.char_indices() {
            match c {
                '<' | '(' => depth += 1,
                '>' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(s[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(s[start..].trim());
        out
    }

    fn is_ident(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_alphabetic() || c == '_') && chars.all(|c| c.is_alphanumeric() || c == '_')
    }

    /// `?`, `()`, `Name` or `Name<Type, ...>`; `range=` is how Rhai's short names spell an
    /// inclusive range.
    fn is_type(s: &str) -> bool {
        let s = s.trim();
        if s == "?" || s == "()" || s == "range=" || is_ident(s) {
            return true;
        }
        match (s.find('<'), s.strip_suffix('>')) {
            (Some(open), Some(inner)) => {
                is_ident(&s[..open]) && split_top(&inner[open + 1..]).iter().all(|t| is_type(t))
            }
            _ => false,
        }
    }

    #[test]
    fn every_definition_file_follows_the_grammar_rhai_writes() {
        let files = engine().definitions();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["__builtin__.d.rhai", "__builtin-operators__.d.rhai", "__static__.d.rhai", "__scope__.d.rhai"]
        );
        for (name, text) in &files {
            let items = check_definition_file(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(items > 5, "{name}: {items} items");
        }
        // The checker is not a yes-man.
        for bad in [
            "fn f(a: Api) -> Map;",
            "module static;\nfn f(a Api);",
            "module static;\nfn (a: Api);",
            "module static;\nlet x;",
        ] {
            assert!(check_definition_file(bad).is_err(), "{bad}");
        }
    }
}
