//! `tripline definitions DIR`: Rhai definition files of the host API, for editors, through the
//! real binary.

use std::collections::BTreeMap;

use tripline::script::{LimitsConfig, ScriptEngine};

use crate::common::project::{binary, Project};

/// Every line of a definition file that is not a doc comment is a whole item as Rhai writes
/// them: `fn` / `op` / `let` / `const`, ending with `;`, after the `module static;` header.
fn assert_definition_file(name: &str, text: &str) {
    assert!(text.starts_with("module static;\n\n"), "{name} has no `module static;` header");
    let mut items = 0;
    for line in text.lines().skip(1).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")) {
        let keyword = line.split([' ', '(']).next().unwrap_or_default();
        assert!(["fn", "op", "let", "const"].contains(&keyword), "{name}: not an item: {line}");
        assert!(line.ends_with(';') && !line.contains("-> ;"), "{name}: not a whole item: {line}");
        items += 1;
    }
    assert!(items > 5, "{name}: {items} items");
}

#[test]
fn definitions_are_written_for_every_host_function_and_the_scope() {
    let p = Project::new("");
    let dir = p.path().join(".rhai").join("definitions");
    let ran = p.run(&["definitions", dir.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let written: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap()))
        .collect();
    let names: Vec<&str> = written.keys().map(String::as_str).collect();
    assert_eq!(names, ["__builtin-operators__.d.rhai", "__builtin__.d.rhai", "__scope__.d.rhai", "__static__.d.rhai"]);
    for name in &names {
        assert!(ran.stdout.contains(&format!("wrote {}", dir.join(name).display())), "{}", ran.stdout);
    }
    for (name, text) in &written {
        assert_definition_file(name, text);
    }

    // What the binary wrote is what the library's engine describes, and that holds every host
    // function the engine has, the seed's among them.
    let engine = ScriptEngine::new(&LimitsConfig::default(), &[]);
    let expected: BTreeMap<String, String> = engine.definitions().into_iter().collect();
    assert_eq!(written, expected);
    let statics = &written["__static__.d.rhai"];
    let api = engine.host_api();
    assert!(api.len() >= 60, "{api:?}");
    for f in &api {
        let start = if f.property { format!("fn get {}(", f.name) } else { format!("fn {}(", f.name) };
        assert!(statics.contains(&start), "no {}.{} in __static__.d.rhai", f.receiver, f.name);
    }
    for line in [
        "fn ProcessFlexHrUserOnAD(api: Api, record: ?, directory: string) -> Map;",
        "fn create_user(d: Directory, user: map) -> Map;",
        "fn get_all(h: Connection, path: string, paging: map) -> Array;",
    ] {
        assert!(statics.contains(line), "no `{line}`");
    }
    let scope = &written["__scope__.d.rhai"];
    for var in ["let record: ?;", "let event: String;", "let params: Map;", "let api: Api;"] {
        assert!(scope.contains(var), "{scope}");
    }

    // Again: the files are replaced, not added to.
    std::fs::write(dir.join("__static__.d.rhai"), "stale").unwrap();
    assert_eq!(p.run(&["definitions", dir.to_str().unwrap()]).code, 0);
    assert_eq!(&std::fs::read_to_string(dir.join("__static__.d.rhai")).unwrap(), statics);
}

#[test]
fn definitions_need_no_configuration_and_a_folder_that_cannot_be_made_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .args(["--config", tmp.path().join("missing.toml").to_str().unwrap(), "definitions"])
        .arg(tmp.path().join("defs"))
        .env("TRIPLINE_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(tmp.path().join("defs/__static__.d.rhai").is_file());

    let blocked = tmp.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let out = std::process::Command::new(binary())
        .args(["--config", tmp.path().join("missing.toml").to_str().unwrap(), "definitions"])
        .arg(blocked.join("defs"))
        .env("TRIPLINE_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: cannot write definitions to {}", blocked.join("defs").display())),
        "{stderr}"
    );
}
