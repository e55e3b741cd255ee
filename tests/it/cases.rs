//! `tripline test --cases DIR` through the real binary: the shipped cases pass against the
//! shipped rules and configuration, a failing case fails the command naming its file and what
//! differed, a malformed one is an error at its place, and no case writes anything.

use std::path::Path;

use crate::common::project::Project;

/// Copies a folder of the repository into the project.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn the_shipped_cases_pass_against_the_shipped_rules() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new(&std::fs::read_to_string(repo.join("tripline.toml")).unwrap());
    for dir in ["rules", "scripts", "cases", "examples/rules-and-scripts"] {
        copy_dir(&repo.join(dir), &p.path().join(dir));
    }
    let cases = p.path().join("cases");
    let ran = p.run(&["test", "--cases", cases.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let count = std::fs::read_dir(&cases).unwrap().count();
    assert!(count >= 4, "cases shipped for the shipped rules");
    assert!(ran.stdout.ends_with(&format!("{count} cases: {count} passed, 0 failed\n")), "{}", ran.stdout);
    assert!(ran.stdout.contains("ok    ") && ran.stdout.contains("flexhr_new_user.toml"), "{}", ran.stdout);
}

const VIP_RULE: &str = r#"name = "Flag VIP tickets"
entity = "ticket"
conditions = [{ field = "Requester.vip", op = "equals", value = true }]
script = "vip.rhai"
"#;

const PASSING: &str = r#"entity = "ticket"
[record]
Requester = { vip = true }
[expect]
rules = ["Flag VIP tickets"]
outcome = "ok"
fields = ['Priority: (absent) -> "P1"']
comments = ["priority raised"]
closed = false
"#;

#[test]
fn a_passing_case_exits_0_and_a_failing_one_exits_1_naming_its_file() {
    let p = Project::new("");
    p.rule("vip", VIP_RULE)
        .script(
            "vip.rhai",
            "api.update(record, #{ Priority: \"P1\" });\napi.comment(record, \"VIP: priority raised\");\n",
        )
        .file("good/passing.toml", PASSING);
    let good = p.path().join("good");
    let ran = p.run(&["test", "--cases", good.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, format!("ok    {}\n1 case: 1 passed, 0 failed\n", good.join("passing.toml").display()));

    // The same case with expectations the rule does not meet, beside the passing one.
    let failing = PASSING
        .replace("outcome = \"ok\"", "outcome = \"failed\"")
        .replace("priority raised", "escalated to the duty manager")
        .replace("closed = false", "closed = true");
    p.file("mixed/passing.toml", PASSING).file("mixed/failing.toml", &failing);
    let mixed = p.path().join("mixed");
    let ran = p.run(&["test", "--cases", mixed.to_str().unwrap()]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let out = &ran.stdout;
    assert!(out.contains(&format!("FAIL  {}\n", mixed.join("failing.toml").display())), "{out}");
    assert!(out.contains(&format!("ok    {}\n", mixed.join("passing.toml").display())), "{out}");
    assert!(out.contains("rule \"Flag VIP tickets\": expected the outcome failed, was ok"), "{out}");
    assert!(
        out.contains("no comment contains \"escalated to the duty manager\"; they are: \"VIP: priority raised\""),
        "{out}"
    );
    assert!(out.contains("expected the record to be closed; no run closes it"), "{out}");
    assert!(out.ends_with("2 cases: 1 passed, 1 failed\n"), "{out}");

    // --json: the same verdicts.
    let ran = p.run(&["test", "--cases", mixed.to_str().unwrap(), "--json"]);
    assert_eq!(ran.code, 1);
    let results = ran.json();
    assert_eq!(results[0]["passed"], false);
    assert_eq!(results[1]["passed"], true);
    assert_eq!(results[0]["problems"].as_array().unwrap().len(), 3, "{results:#}");

    // Nothing was written by any case.
    assert!(p.run(&["records", "list", "ticket", "--json"]).json().as_array().unwrap().is_empty());
}

#[test]
fn a_malformed_case_file_is_an_error_at_its_place() {
    let p = Project::new("");
    p.rule("vip", VIP_RULE).script("vip.rhai", "api.comment(record, \"VIP\");\n");
    let cases = [
        (
            "bad/outcome.toml",
            "entity = \"ticket\"\n[record]\nx = 1\n[expect]\noutcome = \"fine\"\n",
            "5:11: outcome \"fine\" is not ok, failed, retrying or dead",
        ),
        ("bad/typo.toml", "entity = \"ticket\"\n[record]\nx = 1\n[expect]\nrulez = []\n", "5:1: unknown field `rulez`"),
        ("bad/syntax.toml", "entity = \"ticket\"\n[record\n", "2:8: invalid table header; expected"),
        (
            "bad/update.toml",
            "entity = \"ticket\"\nevent = \"updated\"\n[record]\nx = 1\n[expect]\n",
            "2:9: an `updated` case needs a [previous] table",
        ),
        (
            "bad/rule.toml",
            "rule = \"Flag VIP\"\nentity = \"ticket\"\n[record]\nx = 1\n[expect]\n",
            "1:8: no rule named \"Flag VIP\"",
        ),
    ];
    for (file, text, _) in cases {
        p.file(file, text);
    }
    let ran = p.run(&["test", "--cases", p.path().join("bad").to_str().unwrap()]);
    assert_eq!(ran.code, 1, "{ran:?}");
    for (file, _, place) in cases {
        let at = format!("{}:{place}", p.path().join(file).display());
        assert!(ran.stdout.contains(&at), "{at}\n{}", ran.stdout);
    }
    // An empty folder is said as such.
    std::fs::create_dir_all(p.path().join("empty")).unwrap();
    let ran = p.run(&["test", "--cases", p.path().join("empty").to_str().unwrap()]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("holds no case file"), "{ran:?}");
}
