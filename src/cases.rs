//! Rule cases: an admin's regression tests of rules and scripts, run by `tripline test
//! --cases DIR` (and by `cargo test` on the shipped ones).
//!
//! A case file (TOML) holds an entity, an event (default `created`), a record (and for an
//! update its previous version), and an `[expect]` table: the rules that must match, how their
//! runs must end, and texts the writes they plan must contain. Each case runs as `tripline
//! test` runs a rule ([`Runtime::explain_event`]): scripts run, reads are sent, nothing is
//! written and no host system is changed. A case passes when every expectation holds.
//!
//! ```toml
//! entity = "ticket"
//! event = "created"                 # default
//! rule = "Process FlexHR user on AD" # optional: only this rule (its name or file)
//! [record]
//! Source = "FlexHR"
//! EmployeeId = "E1"
//! [expect]
//! rules = ["Process FlexHR user on AD"]   # exactly the rules that match
//! outcome = "ok"                          # ok, failed, retrying or dead: every matching run
//! comments = ["dry run: nothing was changed"]   # a comment (or a closing comment) contains each
//! fields = ["Priority"]                   # a record write (create / update line) contains each
//! directory = ["would create CN=Ann Lee"] # a planned directory change contains each
//! closes = ["Username"]                   # the closing comment contains each ("" for any close)
//! closed = true                           # the record is closed (or, false, not)
//! writes = ["..."]                        # any write line contains each
//! log = ["..."]                           # a log line contains each
//! error = "..."                           # the run's error contains it
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::diag::Diagnostic;
use crate::record::{EventKind, Record};
use crate::runtime::{Explanation, Runtime};
use crate::store::RunStatus;

/// A case file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    rule: Option<String>,
    entity: String,
    #[serde(default = "created")]
    event: String,
    record: toml::Table,
    previous: Option<toml::Table>,
    expect: Expect,
}

fn created() -> String {
    "created".into()
}

/// What a case expects. Every text list: each text must be contained in one of the lines of
/// its kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    rules: Option<Vec<String>>,
    outcome: Option<toml::Spanned<String>>,
    #[serde(default)]
    comments: Vec<String>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    directory: Vec<String>,
    #[serde(default)]
    closes: Vec<String>,
    closed: Option<bool>,
    #[serde(default)]
    writes: Vec<String>,
    #[serde(default)]
    log: Vec<String>,
    error: Option<String>,
}

/// How one case file fared.
#[derive(Debug, serde::Serialize)]
pub struct CaseResult {
    pub file: PathBuf,
    pub passed: bool,
    /// What differed, one sentence each; or the file's problem at `path:line:col`.
    pub problems: Vec<String>,
}

/// The case files of `dir` (`*.toml`, subfolders included), sorted.
pub fn case_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            // Symbolic links to folders are not followed: a loop would never end.
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() && depth < 16 {
                walk(&path, out, depth + 1)?;
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out, 0).map_err(|e| format!("cannot read the cases in {}: {e}", dir.display()))?;
    out.sort();
    if out.is_empty() {
        return Err(format!("{} holds no case file (*.toml)", dir.display()));
    }
    Ok(out)
}

/// Runs one case file.
pub fn run_case(rt: &Runtime, path: &Path) -> CaseResult {
    let problems = match check(rt, path) {
        Ok(problems) => problems,
        Err(d) => vec![d.to_string()],
    };
    CaseResult { file: path.to_path_buf(), passed: problems.is_empty(), problems }
}

fn at(path: &Path, source: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
    Diagnostic::span(path, source, span, message)
}

/// The problems of a case that ran (empty: it passed), or the case file's own problem.
fn check(rt: &Runtime, path: &Path) -> Result<Vec<String>, Diagnostic> {
    let source = std::fs::read_to_string(path).map_err(|e| Diagnostic::at(path, 1, 1, format!("cannot read: {e}")))?;
    let case: CaseFile =
        toml::from_str(&source).map_err(|e| at(path, &source, e.span(), e.message().trim().replace('\n', "; ")))?;
    let outcome = match &case.expect.outcome {
        Some(o) => Some(RunStatus::parse(o.get_ref()).ok_or_else(|| {
            at(path, &source, Some(o.span()), format!("outcome {:?} is not ok, failed, retrying or dead", o.get_ref()))
        })?),
        None => None,
    };
    let record = to_record(&case.entity, &case.record)
        .map_err(|m| at(path, &source, crate::diag::span_of(&source, &["record"]), m))?;
    let previous = match &case.previous {
        Some(p) => Some(
            to_record(&case.entity, p)
                .map(|mut p| {
                    p.id = record.id.clone();
                    p
                })
                .map_err(|m| at(path, &source, crate::diag::span_of(&source, &["previous"]), m))?,
        ),
        None => None,
    };
    let kind = EventKind::from(case.event.clone());
    if kind == EventKind::Updated && previous.is_none() {
        return Err(at(
            path,
            &source,
            crate::diag::span_of(&source, &["event"]),
            "an `updated` case needs a [previous] table: the record before the update",
        ));
    }
    let report = rt
        .explain_event(record, kind, previous, case.rule.as_deref())
        .map_err(|m| at(path, &source, crate::diag::span_of(&source, &["rule"]), m))?;
    Ok(compare(&case.expect, outcome, &report))
}

/// A record from a case's table: its fields, with `id` and `status` as in `tripline fire`.
fn to_record(entity: &str, table: &toml::Table) -> Result<Record, String> {
    let json = crate::de::toml_to_json(&toml::Value::Table(table.clone()))?;
    let submitted = crate::record::from_value(json)?;
    let mut record = Record::new(entity, submitted.fields);
    if let Some(id) = submitted.id {
        record.id = id;
    }
    if let Some(status) = submitted.status {
        record.status = status;
    }
    Ok(record)
}

/// What differs between the expectations and the runs' report.
fn compare(expect: &Expect, outcome: Option<RunStatus>, report: &[Explanation]) -> Vec<String> {
    let mut problems = Vec::new();
    let matched: Vec<&Explanation> = report.iter().filter(|ex| ex.matched).collect();
    let names: Vec<&str> = matched.iter().map(|ex| ex.rule.as_str()).collect();
    if let Some(rules) = &expect.rules {
        let mut want: Vec<&str> = rules.iter().map(String::as_str).collect();
        let mut got = names.clone();
        want.sort();
        got.sort();
        if want != got {
            problems.push(format!("expected the rules {} to match; matched: {}", list(&want), list(&got)));
        }
    }
    if let Some(status) = outcome {
        if matched.is_empty() {
            problems.push(format!("expected the outcome {}, but no rule matched", status.as_str()));
        }
        for ex in &matched {
            let got = ex.outcome.map_or("(not run)", RunStatus::as_str);
            if ex.outcome != Some(status) {
                let why = ex.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                problems.push(format!("rule {:?}: expected the outcome {}, was {got}{why}", ex.rule, status.as_str()));
            }
        }
    }

    let mut comments = Vec::new();
    let mut closes = Vec::new();
    let mut fields = Vec::new();
    let mut directory = Vec::new();
    let mut writes = Vec::new();
    let mut log = Vec::new();
    let mut errors = Vec::new();
    for ex in &matched {
        for w in &ex.writes {
            if let Some(text) = w.pointer("/comment/text").and_then(|t| t.as_str()) {
                comments.push(text.to_string());
            }
            if let Some(close) = w.get("close") {
                let text = close.get("text").and_then(|t| t.as_str()).unwrap_or_default();
                comments.push(text.to_string());
                closes.push(text.to_string());
            }
        }
        for line in &ex.write_lines {
            if line.starts_with("create ") || line.starts_with("update ") {
                fields.push(line.clone());
            }
            writes.push(line.clone());
        }
        directory.extend(ex.planned.iter().cloned());
        for c in &ex.directory_changes {
            let mut line = format!("{} {}", c.operation, c.dn);
            for a in &c.attributes {
                line.push_str(&format!("; {a}"));
            }
            directory.push(line);
        }
        log.extend(ex.log.iter().map(|l| l.message.clone()));
        errors.extend(ex.error.iter().cloned());
    }
    let mut contains = |what: &str, wanted: &[String], lines: &[String]| {
        for text in wanted {
            if !lines.iter().any(|l| l.contains(text.as_str())) {
                let have = match lines {
                    [] => "there are none".to_string(),
                    lines => {
                        format!("they are: {}", lines.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", "))
                    }
                };
                problems.push(format!("no {what} contains {text:?}; {have}"));
            }
        }
    };
    contains("comment", &expect.comments, &comments);
    contains("closing comment", &expect.closes, &closes);
    contains("record write", &expect.fields, &fields);
    contains("directory change", &expect.directory, &directory);
    contains("write", &expect.writes, &writes);
    contains("log line", &expect.log, &log);
    if let Some(text) = &expect.error {
        contains("error", std::slice::from_ref(text), &errors);
    }
    match (expect.closed, closes.is_empty()) {
        (Some(true), true) => problems.push("expected the record to be closed; no run closes it".into()),
        (Some(false), false) => {
            problems.push(format!("expected the record to stay open; it is closed: {:?}", closes[0]))
        }
        _ => {}
    }
    problems
}

fn list(names: &[&str]) -> String {
    match names {
        [] => "none".into(),
        names => names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
    }
}
