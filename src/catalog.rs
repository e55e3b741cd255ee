//! The catalog: every rule and script loaded from their folders, compiled, as one value that
//! the runtime swaps atomically on reload.
//!
//! A reload ([`Catalog::reload`]) builds a whole new catalog aside from the one in force and
//! keeps, file by file, the last good version of anything that no longer loads: a script that
//! stops compiling keeps its previous AST, a rule file that stops parsing keeps its previous
//! rule (rebuilt from its last good text), and a script that a rule still names but that was
//! deleted keeps running in its last good version. Each such file is reported in
//! [`Catalog::problems`]; every other file's change applies. A script that compiles but would
//! fail at run time (an undefined variable, an unknown function or name: see
//! [`crate::script::lint`]) is in error like one that does not compile; what is only likely a
//! mistake (a rule's entity that nothing produces) is in [`Catalog::warnings`].

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rhai::AST;

use crate::diag::Diagnostic;
use crate::rule::{compile_rule, Rule, RuleSet};
use crate::script::lint::{self, KnownNames};
use crate::script::ScriptEngine;
pub use crate::store::{FileKind, StoredFile};

/// Compiled rules and scripts.
#[derive(Default)]
pub struct Catalog {
    pub rules: RuleSet,
    /// Scripts by their path relative to the scripts folder, with `/` separators.
    pub scripts: HashMap<String, Arc<AST>>,
    /// The problems of the files in error when this catalog was built. A file listed here runs
    /// in its last good version when it had one, and is left out otherwise.
    pub problems: Vec<Diagnostic>,
    /// What is probably a mistake but stops nothing (a rule's entity that no webhook or script
    /// produces): `tripline check` prints these.
    pub warnings: Vec<Diagnostic>,
    /// Each script's source in force, so that a reload recompiles only the scripts that
    /// changed and the store can keep the last good versions.
    script_sources: HashMap<String, Source>,
    /// The last good text of each rule file, by path: a rule file that breaks is rebuilt from
    /// it. (Rules are rebuilt rather than shared because a rule set owns its rules.)
    rule_sources: HashMap<PathBuf, Source>,
    /// A hash of every file read (names and contents): equal fingerprints mean equal folders.
    fingerprint: u64,
}

/// The text of a file in force: the file's current text, or its last good one.
#[derive(Debug, Clone)]
pub struct Source {
    pub hash: u64,
    pub text: Arc<str>,
    /// When this text first loaded.
    pub loaded_at: DateTime<Utc>,
}

impl Source {
    fn new(text: &str, loaded_at: DateTime<Utc>) -> Source {
        Source { hash: hash_of(text), text: text.into(), loaded_at }
    }
}

/// What a reload did, for logs, metrics and `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// Every file loaded; the new catalog is in force.
    Applied,
    /// Some files are in error and run in their last good version; the others' changes apply.
    Partial,
    /// The files did not change since the catalog in force was built; nothing was swapped.
    Unchanged,
    /// Nothing was applied (a configuration that does not validate).
    Rejected,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Partial => "partial",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Rejected => "rejected",
        }
    }
}

/// The files of a folder, as [`files_with_extension`] lists them.
#[derive(Debug, Default)]
pub struct Listing {
    /// (path, name relative to the folder with `/` separators), sorted.
    pub files: Vec<(PathBuf, String)>,
    /// What was not walked: symbolic links that loop back to a folder they are in, lead out
    /// of the walked folder or to what the walk reads anyway (warnings: what they lead to is
    /// read once, or not at all, and the rest loads), a subfolder that cannot be read (an
    /// error). Each is reported at the link's (or folder's) path.
    pub problems: Vec<Diagnostic>,
}

/// The files of a folder (recursively) with an extension. Symbolic links to folders are
/// followed while they stay inside the folder and lead to what the walk would not read
/// otherwise (a hidden folder such as Kubernetes' `..data`): a link to a folder outside it,
/// back to one of the folders it is in (`rules/loop -> .`, which would otherwise make the walk
/// endless), or to a folder or file the walk reads anyway (which would load each rule twice)
/// is reported in [`Listing::problems`] as a warning and not followed. Links to files outside
/// the folder are followed wherever they point (a rule file kept elsewhere is the admin's
/// choice, and cannot loop).
pub fn files_with_extension(dir: &Path, ext: &str) -> std::io::Result<Listing> {
    /// (device, inode) of a folder, through links.
    fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            (0, 0)
        }
    }
    struct Walk<'a> {
        root: &'a Path,
        root_real: PathBuf,
        ext: &'a str,
        /// The folders from the root down to the one being read.
        ancestors: Vec<(u64, u64)>,
        out: Listing,
    }
    impl Walk<'_> {
        fn dir(&mut self, dir: &Path) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let path = entry.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                // Editors' temporary and backup files (".x.swp", "x~", ".#x") are not rules, and
                // neither are Kubernetes' ConfigMap internals ("..data", "..2024_01_01_...").
                if name.starts_with('.') || name.ends_with('~') {
                    continue;
                }
                let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
                // Through links; a dangling link is a file that cannot be read, reported by
                // whoever reads it.
                let Ok(meta) = std::fs::metadata(&path) else {
                    if path.extension().is_some_and(|e| e == self.ext) {
                        self.push_file(path);
                    }
                    continue;
                };
                if is_link {
                    if let Some(shown) = self.read_anyway(&path) {
                        let what = if meta.is_dir() { "folder" } else { "file" };
                        self.problem(
                            &path,
                            &format!(
                                "this symbolic link leads to the {what} {shown}, which is read anyway; it is not \
                                 followed (its rules would load twice)"
                            ),
                        );
                        continue;
                    }
                }
                if meta.is_dir() {
                    let id = identity(&meta);
                    if cfg!(unix) && self.ancestors.contains(&id) {
                        self.problem(
                            &path,
                            "this symbolic link points back to a folder it is in (a loop); it is not followed",
                        );
                        continue;
                    }
                    if is_link {
                        let inside = std::fs::canonicalize(&path).is_ok_and(|real| real.starts_with(&self.root_real));
                        if !inside {
                            self.problem(&path, "this symbolic link leads out of the folder; links to folders are followed only inside it, so its rules are not loaded");
                            continue;
                        }
                    }
                    self.ancestors.push(id);
                    if let Err(e) = self.dir(&path) {
                        self.out.problems.push(Diagnostic::file(&path, format!("cannot read this folder: {e}")));
                    }
                    self.ancestors.pop();
                } else if path.extension().is_some_and(|e| e == self.ext) {
                    self.push_file(path);
                }
            }
            Ok(())
        }

        fn push_file(&mut self, path: PathBuf) {
            let rel = path.strip_prefix(self.root).unwrap_or(&path);
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            self.out.files.push((path, rel));
        }

        /// Where a link leads, shown relative to the walked folder, when that is a place the walk
        /// reads by itself: inside the folder, not hidden, and not an ancestor of the link (a
        /// loop, reported as such).
        fn read_anyway(&self, link: &Path) -> Option<String> {
            let real = std::fs::canonicalize(link).ok()?;
            let rel = real.strip_prefix(&self.root_real).ok()?;
            let parent = link.parent().and_then(|p| std::fs::canonicalize(p).ok())?;
            if parent.starts_with(&real) {
                return None;
            }
            let hidden = rel.components().any(|c| {
                let name = c.as_os_str().to_string_lossy();
                name.starts_with('.') || name.ends_with('~')
            });
            (!hidden).then(|| self.root.join(rel).display().to_string())
        }

        /// A link or folder that is not walked: a warning (the rest loads; a link that is
        /// not followed loses nothing the walk does not read, or reads what the admin put
        /// outside), unless the folder could not be read.
        fn problem(&mut self, path: &Path, message: &str) {
            self.out.problems.push(Diagnostic::file(path, message).warning());
        }
    }
    let root_meta = std::fs::metadata(dir)?;
    let mut walk = Walk {
        root: dir,
        root_real: std::fs::canonicalize(dir)?,
        ext,
        ancestors: vec![identity(&root_meta)],
        out: Listing::default(),
    };
    walk.dir(dir)?;
    walk.out.files.sort();
    Ok(walk.out)
}

fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Catalog {
    /// Loads and compiles every script and rule; returns what compiled and every problem (the
    /// warnings are in [`Catalog::warnings`]). Scripts are checked against `names`.
    pub fn load(
        engine: &ScriptEngine,
        rules_dir: &Path,
        scripts_dir: &Path,
        names: &KnownNames,
    ) -> (Catalog, Vec<Diagnostic>) {
        let catalog = Self::build(engine, rules_dir, scripts_dir, None, names);
        let diags = catalog.problems.clone();
        (catalog, diags)
    }

    /// Builds a new catalog from the folders, keeping from `previous` the last good version of
    /// every file that no longer loads (see the module docs). The problems are in
    /// [`Catalog::problems`].
    pub fn reload(
        engine: &ScriptEngine,
        rules_dir: &Path,
        scripts_dir: &Path,
        previous: &Catalog,
        names: &KnownNames,
    ) -> Catalog {
        Self::build(engine, rules_dir, scripts_dir, Some(previous), names)
    }

    /// The rule and script files in force, with their texts (a broken file's last good one),
    /// for the store to keep: `tripline run` after a restart starts from them
    /// ([`Catalog::from_stored`]) when a file is broken.
    pub fn files(&self, rules_dir: &Path) -> Vec<StoredFile> {
        let mut out: Vec<StoredFile> = self
            .script_sources
            .iter()
            .map(|(rel, s)| StoredFile {
                kind: FileKind::Script,
                path: rel.clone(),
                text: s.text.to_string(),
                loaded_at: s.loaded_at,
            })
            .collect();
        for (path, s) in &self.rule_sources {
            let rel = path.strip_prefix(rules_dir).unwrap_or(path);
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push(StoredFile { kind: FileKind::Rule, path: rel, text: s.text.to_string(), loaded_at: s.loaded_at });
        }
        out.sort_by(|a, b| (a.kind.as_str(), &a.path).cmp(&(b.kind.as_str(), &b.path)));
        out
    }

    /// A catalog of stored last good versions, to build the first catalog of a start from
    /// (as [`Catalog::reload`]'s `previous`): a file that is broken on disk then runs its
    /// stored version. A stored text that no longer compiles (after an upgrade) is left out.
    pub fn from_stored(engine: &ScriptEngine, rules_dir: &Path, scripts_dir: &Path, files: &[StoredFile]) -> Catalog {
        let mut catalog = Catalog::default();
        let guard = |w: &str| engine.compile_guard(w);
        for f in files {
            let source = Source { hash: hash_of(&f.text), text: f.text.as_str().into(), loaded_at: f.loaded_at };
            match f.kind {
                FileKind::Script => {
                    if let Ok(ast) = engine.compile(&scripts_dir.join(&f.path), &f.text) {
                        catalog.scripts.insert(f.path.clone(), Arc::new(ast));
                        catalog.script_sources.insert(f.path.clone(), source);
                    }
                }
                FileKind::Rule => {
                    let path = rules_dir.join(&f.path);
                    if compile_rule(&path, &f.text, &guard).is_ok() {
                        catalog.rule_sources.insert(path, source);
                    }
                }
            }
        }
        catalog
    }

    /// Whether this catalog was built from exactly the same files as `other`.
    pub fn same_files_as(&self, other: &Catalog) -> bool {
        self.fingerprint == other.fingerprint
    }

    fn build(
        engine: &ScriptEngine,
        rules_dir: &Path,
        scripts_dir: &Path,
        previous: Option<&Catalog>,
        names: &KnownNames,
    ) -> Catalog {
        let mut diags = Vec::new();
        let mut fingerprint = DefaultHasher::new();
        let now = Utc::now();
        let mut scripts = HashMap::new();
        let mut script_sources = HashMap::new();
        let mut broken_scripts = Vec::new();
        let keep_script =
            |rel: &str, scripts: &mut HashMap<String, Arc<AST>>, sources: &mut HashMap<String, Source>| {
                if let Some(p) = previous {
                    if let Some(ast) = p.scripts.get(rel) {
                        scripts.insert(rel.to_string(), ast.clone());
                        if let Some(s) = p.script_sources.get(rel) {
                            sources.insert(rel.to_string(), s.clone());
                        }
                        return true;
                    }
                }
                false
            };
        match files_with_extension(scripts_dir, "rhai") {
            Ok(listing) => {
                diags.extend(listing.problems);
                for (path, rel) in listing.files {
                    let src = match std::fs::read_to_string(&path) {
                        Ok(s) => s,
                        Err(e) => {
                            diags.push(Diagnostic::file(&path, format!("cannot read script: {e}")));
                            keep_script(&rel, &mut scripts, &mut script_sources);
                            broken_scripts.push(rel);
                            continue;
                        }
                    };
                    let hash = hash_of(&src);
                    (&rel, hash).hash(&mut fingerprint);
                    let unchanged = previous
                        .and_then(|p| Some((p.script_sources.get(&rel)?, p.scripts.get(&rel)?)))
                        .filter(|(s, _)| s.hash == hash);
                    if let Some((source, ast)) = unchanged {
                        scripts.insert(rel.clone(), ast.clone());
                        script_sources.insert(rel, source.clone());
                        continue;
                    }
                    // A script that would fail at run time is in error like one that does not compile.
                    let checked = engine.compile(&path, &src).map_err(|d| vec![d]).and_then(|ast| {
                        let mistakes = engine.lint(&path, &ast, names);
                        if mistakes.is_empty() {
                            Ok(ast)
                        } else {
                            Err(mistakes)
                        }
                    });
                    match checked {
                        Ok(ast) => {
                            scripts.insert(rel.clone(), Arc::new(ast));
                            script_sources.insert(rel, Source::new(&src, now));
                        }
                        Err(mut d) => {
                            if keep_script(&rel, &mut scripts, &mut script_sources) {
                                let at = script_sources.get(&rel).map(|s| s.loaded_at);
                                d[0].message.push_str(&kept_since(at));
                            }
                            diags.extend(d);
                            broken_scripts.push(rel);
                        }
                    }
                }
            }
            Err(e) => {
                diags.push(Diagnostic::file(scripts_dir, format!("cannot read the scripts folder: {e}")));
                // A folder that cannot be read (mid-swap, permissions) keeps every script.
                if let Some(p) = previous {
                    scripts.clone_from(&p.scripts);
                    script_sources.clone_from(&p.script_sources);
                }
            }
        }

        let mut rules: Vec<Rule> = Vec::new();
        let mut rule_sources: HashMap<PathBuf, Source> = HashMap::new();
        let guard = |w: &str| engine.compile_guard(w);
        // The last good version of a rule file, when it had one.
        let last_good = |path: &Path| -> Option<(Rule, Source)> {
            let src = previous?.rule_sources.get(path)?.clone();
            compile_rule(path, &src.text, &guard).ok().map(|r| (r, src))
        };
        let rule_files = match files_with_extension(rules_dir, "toml") {
            Ok(listing) => {
                diags.extend(listing.problems);
                listing.files.into_iter().map(|(p, _)| p).collect()
            }
            Err(e) => {
                diags.push(Diagnostic::file(rules_dir, format!("cannot read the rules folder: {e}")));
                // As for scripts: an unreadable folder keeps every rule.
                let mut kept: Vec<PathBuf> =
                    previous.map(|p| p.rule_sources.keys().cloned().collect()).unwrap_or_default();
                kept.sort();
                for path in kept {
                    if let Some((rule, src)) = last_good(&path) {
                        rules.push(rule);
                        rule_sources.insert(path, src);
                    }
                }
                Vec::new()
            }
        };
        for path in rule_files {
            let src = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) => {
                    let kept = last_good(&path);
                    let note = kept.as_ref().map(|(_, s)| kept_since(Some(s.loaded_at))).unwrap_or_default();
                    diags.push(Diagnostic::file(&path, format!("cannot read rule: {e}{note}")));
                    if let Some((rule, src)) = kept {
                        rule_sources.insert(path, src);
                        rules.push(rule);
                    }
                    continue;
                }
            };
            (&path, hash_of(&src)).hash(&mut fingerprint);
            let compiled = compile_rule(&path, &src, &guard).and_then(|rule| {
                if scripts.contains_key(&rule.script) || broken_scripts.contains(&rule.script) {
                    return Ok(rule);
                }
                let missing = |kept: bool| {
                    let msg = format!("script {:?} does not exist in {}", rule.script, scripts_dir.display());
                    vec![Diagnostic::span(&path, &src, script_span(&src), msg + kept_note(kept))]
                };
                // A script deleted under a rule that still names it keeps its last good version.
                if keep_script(&rule.script, &mut scripts, &mut script_sources) {
                    diags.extend(missing(true));
                    return Ok(rule);
                }
                Err(missing(false))
            });
            let (rule, source) = match compiled {
                Ok(rule) => {
                    let source = match previous.and_then(|p| p.rule_sources.get(&path)) {
                        Some(s) if s.hash == hash_of(&src) => s.clone(),
                        _ => Source::new(&src, now),
                    };
                    (rule, source)
                }
                // The last good rule runs only with its script, itself possibly a last good
                // version (the file broke and its script was deleted in the same change).
                Err(mut d) => match last_good(&path) {
                    Some((rule, src))
                        if scripts.contains_key(&rule.script)
                            || keep_script(&rule.script, &mut scripts, &mut script_sources) =>
                    {
                        if let Some(first) = d.first_mut() {
                            first.message.push_str(&kept_since(Some(src.loaded_at)));
                        }
                        diags.extend(d);
                        (rule, src)
                    }
                    _ => {
                        diags.extend(d);
                        continue;
                    }
                },
            };
            if let Some(other) = rules.iter().find(|r| r.name == rule.name) {
                diags.push(Diagnostic::file(
                    &path,
                    format!("rule name {:?} is already used by {}", rule.name, other.path.display()),
                ));
                continue;
            }
            rule_sources.insert(path, source);
            rules.push(rule);
        }
        let warnings = entity_warnings(&rules, &rule_sources, &scripts, names);
        Catalog {
            rules: RuleSet::new(rules),
            scripts,
            problems: diags,
            warnings,
            script_sources,
            rule_sources,
            fingerprint: fingerprint.finish(),
        }
    }
}

/// The note on a problem whose file runs its last good version.
fn kept_since(loaded_at: Option<DateTime<Utc>>) -> String {
    match loaded_at {
        Some(at) => format!(" (the last good version keeps running, loaded {})", at.format("%Y-%m-%d %H:%M:%S UTC")),
        None => kept_note(true).to_string(),
    }
}

/// The rules whose entity no webhook and no script produces (see [`lint::unproduced_entities`]).
fn entity_warnings(
    rules: &[Rule],
    sources: &HashMap<PathBuf, Source>,
    scripts: &HashMap<String, Arc<AST>>,
    names: &KnownNames,
) -> Vec<Diagnostic> {
    let mut creates: Vec<(String, lint::Creates)> =
        scripts.values().map(|ast| (ast.source().unwrap_or_default().to_string(), lint::creates(ast))).collect();
    creates.sort_by(|a, b| a.0.cmp(&b.0));
    let rules = rules.iter().map(|r| lint::RuleEntity {
        name: &r.name,
        path: &r.path,
        source: sources.get(&r.path).map_or("", |s| &s.text),
        entity: &r.entity,
    });
    lint::unproduced_entities(rules, &creates, names)
}

fn kept_note(kept: bool) -> &'static str {
    if kept {
        " (the last good version keeps running)"
    } else {
        ""
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;

    struct Dirs {
        _tmp: tempfile::TempDir,
        rules: PathBuf,
        scripts: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let rules = tmp.path().join("rules");
        let scripts = tmp.path().join("scripts");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::create_dir_all(&scripts).unwrap();
        Dirs { _tmp: tmp, rules, scripts }
    }

    fn rule(name: &str, script: &str, value: &str) -> String {
        format!(
            "name = \"{name}\"\nentity = \"ticket\"\nscript = \"{script}\"\n\
             conditions = [{{ field = \"Source\", op = \"equals\", value = \"{value}\" }}]\n"
        )
    }

    fn condition_value(c: &Catalog, name: &str) -> serde_json::Value {
        let r = c.rules.get(name).unwrap();
        match &r.conditions[0].op {
            crate::rule::condition::Op::Equals(v) => v.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_version_and_others_apply() {
        let d = dirs();
        let e = ScriptEngine::new(&LimitsConfig::default(), &[]);
        std::fs::write(d.scripts.join("a.rhai"), "let x = 1;").unwrap();
        std::fs::write(d.rules.join("a.toml"), rule("A", "a.rhai", "one")).unwrap();
        std::fs::write(d.rules.join("b.toml"), rule("B", "a.rhai", "one")).unwrap();
        let (c0, diags) = Catalog::load(&e, &d.rules, &d.scripts, &KnownNames::default());
        assert!(diags.is_empty(), "{diags:?}");

        // Break rule A and the script; change rule B.
        std::fs::write(d.rules.join("a.toml"), "name = \"A\"\nentity = ").unwrap();
        std::fs::write(d.scripts.join("a.rhai"), "let x = ;").unwrap();
        std::fs::write(d.rules.join("b.toml"), rule("B", "a.rhai", "two")).unwrap();
        let c1 = Catalog::reload(&e, &d.rules, &d.scripts, &c0, &KnownNames::default());
        assert_eq!(c1.problems.len(), 2, "{:?}", c1.problems);
        assert!(c1.problems.iter().all(|p| p.message.contains("last good version")), "{:?}", c1.problems);
        assert_eq!(condition_value(&c1, "A"), "one");
        assert_eq!(condition_value(&c1, "B"), "two");
        assert!(Arc::ptr_eq(&c1.scripts["a.rhai"], &c0.scripts["a.rhai"]));

        // Still broken on the next reload: the same last good versions.
        let c2 = Catalog::reload(&e, &d.rules, &d.scripts, &c1, &KnownNames::default());
        assert_eq!(condition_value(&c2, "A"), "one");
        assert!(Arc::ptr_eq(&c2.scripts["a.rhai"], &c0.scripts["a.rhai"]));
        assert!(c2.same_files_as(&c1));

        // Fixed: the new versions apply.
        std::fs::write(d.rules.join("a.toml"), rule("A", "a.rhai", "three")).unwrap();
        std::fs::write(d.scripts.join("a.rhai"), "let x = 2;").unwrap();
        let c3 = Catalog::reload(&e, &d.rules, &d.scripts, &c2, &KnownNames::default());
        assert!(c3.problems.is_empty(), "{:?}", c3.problems);
        assert_eq!(condition_value(&c3, "A"), "three");
        assert!(!Arc::ptr_eq(&c3.scripts["a.rhai"], &c0.scripts["a.rhai"]));
        assert!(!c3.same_files_as(&c2));
    }

    #[test]
    fn a_deleted_script_that_a_rule_names_keeps_running_and_is_reported() {
        let d = dirs();
        let e = ScriptEngine::new(&LimitsConfig::default(), &[]);
        std::fs::write(d.scripts.join("a.rhai"), "1").unwrap();
        std::fs::write(d.scripts.join("unused.rhai"), "2").unwrap();
        std::fs::write(d.rules.join("a.toml"), rule("A", "a.rhai", "x")).unwrap();
        let (c0, _) = Catalog::load(&e, &d.rules, &d.scripts, &KnownNames::default());
        std::fs::remove_file(d.scripts.join("a.rhai")).unwrap();
        std::fs::remove_file(d.scripts.join("unused.rhai")).unwrap();
        let c1 = Catalog::reload(&e, &d.rules, &d.scripts, &c0, &KnownNames::default());
        assert!(c1.scripts.contains_key("a.rhai"));
        assert!(!c1.scripts.contains_key("unused.rhai"), "a script no rule names goes with its file");
        assert_eq!(c1.problems.len(), 1);
        let p = &c1.problems[0];
        assert!(p.path.ends_with("a.toml") && p.line == 3, "{p}");
        assert!(p.message.contains("does not exist") && p.message.contains("last good"), "{p}");

        // The rule file breaking as well keeps both last good versions.
        std::fs::write(d.rules.join("a.toml"), "name = ").unwrap();
        let c1b = Catalog::reload(&e, &d.rules, &d.scripts, &c0, &KnownNames::default());
        assert!(c1b.rules.get("A").is_some() && c1b.scripts.contains_key("a.rhai"), "{:?}", c1b.problems);

        // Deleting the rule too clears everything.
        std::fs::remove_file(d.rules.join("a.toml")).unwrap();
        let c2 = Catalog::reload(&e, &d.rules, &d.scripts, &c1, &KnownNames::default());
        assert!(c2.problems.is_empty() && c2.scripts.is_empty() && c2.rules.rules().is_empty());
    }

    #[test]
    fn a_new_broken_file_without_a_good_version_is_only_reported() {
        let d = dirs();
        let e = ScriptEngine::new(&LimitsConfig::default(), &[]);
        std::fs::write(d.scripts.join("a.rhai"), "1").unwrap();
        let (c0, _) = Catalog::load(&e, &d.rules, &d.scripts, &KnownNames::default());
        std::fs::write(d.rules.join("new.toml"), rule("N", "missing.rhai", "x")).unwrap();
        let c1 = Catalog::reload(&e, &d.rules, &d.scripts, &c0, &KnownNames::default());
        assert!(c1.rules.rules().is_empty());
        assert_eq!(c1.problems.len(), 1);
        assert!(!c1.problems[0].message.contains("last good"));
    }

    #[test]
    fn a_script_that_would_fail_at_run_time_is_in_error_and_an_unproduced_entity_only_warns() {
        let d = dirs();
        let e = ScriptEngine::new(&LimitsConfig::default(), &[]);
        let names = KnownNames { entities: Some(Default::default()), ..KnownNames::default() };
        std::fs::write(d.scripts.join("a.rhai"), "api.comment(record, \"hi\");").unwrap();
        std::fs::write(d.rules.join("a.toml"), rule("A", "a.rhai", "one")).unwrap();
        let (c0, problems) = Catalog::load(&e, &d.rules, &d.scripts, &names);
        assert!(problems.is_empty() && c0.problems.is_empty(), "{problems:?}");
        assert_eq!(c0.warnings.len(), 1, "nothing produces tickets: {:?}", c0.warnings);
        assert!(!c0.warnings[0].is_error() && c0.warnings[0].line == 2, "{}", c0.warnings[0]);

        std::fs::write(d.scripts.join("a.rhai"), "api.coment(record, \"hi\");").unwrap();
        let c1 = Catalog::reload(&e, &d.rules, &d.scripts, &c0, &names);
        assert_eq!(c1.problems.len(), 1, "{:?}", c1.problems);
        let p = &c1.problems[0];
        assert!(p.path.ends_with("a.rhai") && (p.line, p.col) == (1, 5), "{p}");
        assert!(
            p.message.contains("did you mean `comment`?")
                && p.message.contains("(the last good version keeps running, loaded "),
            "{p}"
        );
        assert!(Arc::ptr_eq(&c1.scripts["a.rhai"], &c0.scripts["a.rhai"]));
    }
}
