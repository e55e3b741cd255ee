//! The module graph: dependencies point one way.
//!
//! Every `crate::NAME` path in `src/` is an edge from the top-level module it is written in
//! (`src/NAME.rs` or `src/NAME/...`) to module `NAME`: `use` lines and groups
//! (`use crate::{a, b::c}`) as well as paths in function bodies and tests. Comments and
//! string literals are not code and count for nothing. The graph has no cycle, and the leaves
//! import nothing of the crate (the one exception is written down below, with its reason).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The leaves and what each may import. `secret` reports into `diag`'s `CheckCtx` when a
/// section's build resolves a secret; the edge points from secrets to diagnostics, so that
/// `diag` knows nothing of secrets.
const LEAVES: &[(&str, &[&str])] = &[
    ("class", &[]),
    ("de", &[]),
    ("diag", &[]),
    ("memory", &[]),
    ("record", &[]),
    ("tls", &[]),
    ("watch", &[]),
    ("secret", &["diag"]),
];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>;

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!("the modules import each other in a cycle: {}\n\n{}", describe_cycle(&graph, &cycle), show(&graph));
    }
}

#[test]
fn leaves_import_nothing_of_the_crate() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (leaf, allowed) in LEAVES {
        let imports = graph.get(*leaf).unwrap_or_else(|| panic!("no module `{leaf}` in src/lib.rs"));
        for (to, files) in imports {
            if !allowed.contains(&to.as_str()) {
                wrong.push(format!("{leaf} -> {to} (in {})", list(files)));
            }
        }
    }
    assert!(wrong.is_empty(), "leaves that import the crate:\n  {}\n\n{}", wrong.join("\n  "), show(&graph));
}

/// The edges read from a text like `src/`'s are the ones written in its code.
#[test]
fn the_reader_finds_paths_in_code_only() {
    let text = r##"
use crate::a::X;
use crate::{b::Y, c, d::{e, f}};
// crate::commented
/* crate::block /* nested crate::deeper */ */
/// [`crate::doc`]
fn f<'a>(x: &'a str) -> char { let _ = "crate::in_a_string \" crate::escaped"; let _ = r#"crate::raw "quoted""#; crate::g::h(x); let _ = ['\'', '{']; crate::i::j() }
"##;
    let found: BTreeSet<String> = crate_paths(text).into_iter().collect();
    let expected: BTreeSet<String> = ["a", "b", "c", "d", "g", "i"].map(String::from).into();
    assert_eq!(found, expected);
}

/// A cycle is found, and said with the files of its edges.
#[test]
fn a_cycle_is_found_and_shown() {
    let edge = |to: &str, file: &str| (to.to_string(), BTreeSet::from([PathBuf::from(file)]));
    let graph: Graph = BTreeMap::from([
        ("a".to_string(), BTreeMap::from([edge("b", "a.rs")])),
        ("b".to_string(), BTreeMap::from([edge("c", "b/x.rs")])),
        ("c".to_string(), BTreeMap::from([edge("b", "c.rs")])),
        ("d".to_string(), BTreeMap::new()),
    ]);
    let cycle = find_cycle(&graph).expect("b and c import each other");
    assert_eq!(cycle, ["b", "c", "b"]);
    assert_eq!(describe_cycle(&graph, &cycle), "b -> c -> b\n  b -> c (in b/x.rs)\n  c -> b (in c.rs)");
    let acyclic: Graph = BTreeMap::from([
        ("a".to_string(), BTreeMap::from([edge("b", "a.rs"), edge("c", "a.rs")])),
        ("b".to_string(), BTreeMap::from([edge("c", "b.rs")])),
        ("c".to_string(), BTreeMap::new()),
    ]);
    assert_eq!(find_cycle(&acyclic), None);
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules (`pub mod NAME;` in lib.rs) and the edges between them.
fn graph() -> Graph {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let modules: BTreeSet<String> = code_of(&lib)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';').map(String::from))
        .collect();
    assert!(modules.len() > 10, "modules in lib.rs: {modules:?}");
    let mut graph: Graph = modules.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for file in rust_files(&src()) {
        let rel = file.strip_prefix(src()).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let from = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if from == "lib" || from == "main" {
            continue;
        }
        assert!(modules.contains(&from), "{} belongs to no module of lib.rs", rel.display());
        let text = std::fs::read_to_string(&file).unwrap();
        for to in crate_paths(&text) {
            assert!(modules.contains(&to), "{}: crate::{to} is no module of lib.rs", rel.display());
            if to != from {
                graph.get_mut(&from).unwrap().entry(to).or_default().insert(rel.to_path_buf());
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The first segment of every `crate::` path in the code of `text`.
fn crate_paths(text: &str) -> Vec<String> {
    let code = code_of(text);
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `$crate::` and names ending in `crate` (`my_crate::`) are not this crate's root.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let after = rest.trim_start();
        if let Some(group) = after.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.push(ident(after).to_string());
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

/// The first segment of each path of a `{...}` group, up to its closing brace.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_start = true,
            c if at_start && !c.is_whitespace() => {
                heads.push(ident(&group[i..]).to_string());
                at_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// `text` with comments and the insides of string and character literals blanked out, lines
/// kept.
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !prev_is_ident(&chars, i)
            || c == 'r'
                && matches!(next, Some('"') | Some('#'))
                && i > 0
                && chars[i - 1] == 'b'
                && !prev_is_ident(&chars, i - 1)
        {
            // A raw string: r"..." or r#"..."# with any number of #.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let closing: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let closing: Vec<char> = closing.chars().collect();
            while j < chars.len() && chars[j..].iter().take(closing.len()).ne(closing.iter()) {
                blank(&mut out, chars[j]);
                j += 1;
            }
            i = j + closing.len();
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    blank(&mut out, c);
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or else a lifetime ('a).
            match (next, chars.get(i + 2)) {
                (Some('\\'), _) => {
                    // Past the quote, the backslash and the escaped character.
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                }
                (Some(_), Some('\'')) => i += 3,
                _ => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// A cycle of modules, the first one repeated at its end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(graph: &Graph, m: &str, done: &mut BTreeSet<String>, path: &mut Vec<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for to in graph[m].keys() {
            if let Some(cycle) = visit(graph, to, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(graph, m, &mut done, &mut Vec::new()))
}

/// Each edge of a cycle with the files it is written in.
fn describe_cycle(graph: &Graph, cycle: &[String]) -> String {
    let edges: Vec<String> =
        cycle.windows(2).map(|w| format!("{} -> {} (in {})", w[0], w[1], list(&graph[&w[0]][&w[1]]))).collect();
    format!("{}\n  {}", cycle.join(" -> "), edges.join("\n  "))
}

fn list(files: &BTreeSet<PathBuf>) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// The whole graph, a module a line.
fn show(graph: &Graph) -> String {
    let lines: Vec<String> =
        graph.iter().map(|(m, to)| format!("{m} -> {}", to.keys().cloned().collect::<Vec<_>>().join(", "))).collect();
    format!("the module graph:\n  {}", lines.join("\n  "))
}
