//! The catalog: every rule and script loaded from their folders, compiled, as one value that
//! the runtime swaps atomically on reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::AST;

use crate::diag::Diagnostic;
use crate::rule::{compile_rule, Rule, RuleSet};
use crate::script::ScriptEngine;

/// Compiled rules and scripts.
#[derive(Default)]
pub struct Catalog {
    pub rules: RuleSet,
    /// Scripts by their path relative to the scripts folder, with `/` separators.
    pub scripts: HashMap<String, Arc<AST>>,
}

/// The files of a folder (recursively) with an extension, sorted, as (path, relative name).
pub fn files_with_extension(dir: &Path, ext: &str) -> std::io::Result<Vec<(PathBuf, String)>> {
    fn walk(root: &Path, dir: &Path, ext: &str, out: &mut Vec<(PathBuf, String)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Editors' temporary and backup files (".x.swp", "x~", ".#x") are not rules.
            if name.starts_with('.') || name.ends_with('~') {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, ext, out)?;
            } else if path.extension().is_some_and(|e| e == ext) {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push((path, rel));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, ext, &mut out)?;
    out.sort();
    Ok(out)
}

impl Catalog {
    /// Loads and compiles every script and rule; returns what compiled and every problem.
    pub fn load(engine: &ScriptEngine, rules_dir: &Path, scripts_dir: &Path) -> (Catalog, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut scripts = HashMap::new();
        let mut broken_scripts = Vec::new();
        match files_with_extension(scripts_dir, "rhai") {
            Ok(files) => {
                for (path, rel) in files {
                    match std::fs::read_to_string(&path) {
                        Ok(src) => match engine.compile(&path, &src) {
                            Ok(ast) => {
                                scripts.insert(rel, Arc::new(ast));
                            }
                            Err(d) => {
                                diags.push(d);
                                broken_scripts.push(rel);
                            }
                        },
                        Err(e) => diags.push(Diagnostic::file(&path, format!("cannot read script: {e}"))),
                    }
                }
            }
            Err(e) => diags.push(Diagnostic::file(scripts_dir, format!("cannot read the scripts folder: {e}"))),
        }
        let mut rules: Vec<Rule> = Vec::new();
        match files_with_extension(rules_dir, "toml") {
            Ok(files) => {
                for (path, _) in files {
                    let src = match std::fs::read_to_string(&path) {
                        Ok(s) => s,
                        Err(e) => {
                            diags.push(Diagnostic::file(&path, format!("cannot read rule: {e}")));
                            continue;
                        }
                    };
                    match compile_rule(&path, &src, &|w| engine.compile_guard(w)) {
                        Ok(rule) => {
                            if !scripts.contains_key(&rule.script) && !broken_scripts.contains(&rule.script) {
                                let span = script_span(&src);
                                diags.push(Diagnostic::span(
                                    &path,
                                    &src,
                                    span,
                                    format!("script {:?} does not exist in {}", rule.script, scripts_dir.display()),
                                ));
                                continue;
                            }
                            if let Some(other) = rules.iter().find(|r| r.name == rule.name) {
                                diags.push(Diagnostic::file(
                                    &path,
                                    format!("rule name {:?} is already used by {}", rule.name, other.path.display()),
                                ));
                                continue;
                            }
                            rules.push(rule);
                        }
                        Err(d) => diags.extend(d),
                    }
                }
            }
            Err(e) => diags.push(Diagnostic::file(rules_dir, format!("cannot read the rules folder: {e}"))),
        }
        (Catalog { rules: RuleSet::new(rules), scripts }, diags)
    }
}

/// Where the `script = ...` value is, for a diagnostic about it.
fn script_span(src: &str) -> Option<std::ops::Range<usize>> {
    #[derive(serde::Deserialize)]
    struct OnlyScript {
        script: toml::Spanned<String>,
    }
    toml::from_str::<OnlyScript>(src).ok().map(|o| o.script.span())
}
