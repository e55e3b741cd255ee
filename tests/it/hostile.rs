//! Hostile input: records that try to break the parser, the store or the rules. Each gets a
//! clear error or correct handling, never a panic, and nothing half-written.

use serde_json::{json, Value};

use crate::common::project::Project;

fn project() -> Project {
    let p = Project::new("[engine]\nmax_record_bytes = 2000000\n");
    p.rule(
        "gt",
        "name = \"big n\"\nentity = \"t\"\nscript = \"s.rhai\"\nconditions = [{ field = \"n\", op = \"gt\", value = 5 }]\n",
    )
    .rule(
        "eq",
        "name = \"name\"\nentity = \"t\"\nscript = \"s.rhai\"\nconditions = [{ field = \"Name\", op = \"equals\", value = \"Zoë\u{202e}\\u0000x\" }]\n",
    )
    .script("s.rhai", "api.comment(record, `${rule}: ${record.len()} keys`);");
    p
}

#[test]
fn malformed_deep_and_oversized_records_are_refused_and_nothing_is_stored() {
    let p = project();
    let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!("{{\"a\": \"{}\"}}", "x".repeat(3_000_000));
    let huge_array = format!("{{\"a\": [{}1]}}", "1,".repeat(1_500_000));
    let truncated = r#"{"Name": "Zo"#;
    for (input, expected) in [
        (deep.as_str(), "recursion limit"),
        (huge.as_str(), "max_record_bytes"),
        (huge_array.as_str(), "max_record_bytes"),
        (truncated, "malformed JSON"),
        ("{\"a\": 1}}", "malformed JSON"),
        ("\u{feff}{\"a\": 1}", "malformed JSON"),
        ("{\"a\": NaN}", "malformed JSON"),
    ] {
        let ran = p.run_stdin(&["fire", "t", "--record", "-"], Some(input));
        assert_eq!(ran.code, 1, "{}: {ran:?}", &input[..input.len().min(40)]);
        assert!(ran.stderr.contains(expected), "expected {expected:?}: {}", ran.stderr);
        assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    }
    assert!(p.records("t").is_empty(), "nothing stored");
}

#[test]
fn wrong_types_for_compared_fields_do_not_match_and_do_not_fail() {
    let p = project();
    for (n, matches) in [
        (json!(9), true),
        (json!("abc"), false),
        (json!([9]), false),
        (json!({"n": 9}), false),
        (json!(null), false),
        (json!(true), false),
        (json!(1e308), true),
    ] {
        let (ran, runs) = p.fire("t", &json!({ "n": n }).to_string());
        assert_eq!(ran.code, 0, "{n}: {ran:?}");
        assert_eq!(runs.len(), usize::from(matches), "n = {n}: {runs:?}");
    }
}

#[test]
fn unicode_edge_cases_round_trip_exactly() {
    let p = project();
    let name = "Zoë\u{202e}\u{0000}x";
    let fields = json!({
        "Name": name,
        "Combining": "e\u{0301}\u{0301}\u{0301}",
        "Rtl": "\u{05e9}\u{05dc}\u{05d5}\u{05dd} abc \u{0627}\u{0644}",
        "Emoji": "👩‍💻🏳️‍🌈",
        "Nul": "a\u{0000}b",
        "Surrogates": "\u{10FFFF}",
        "key with \u{0000} nul": 1,
    });
    let (ran, runs) = p.fire("t", &fields.to_string());
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(runs.len(), 1, "the rule comparing with an exotic name matches: {runs:?}");
    let stored = &p.records("t")[0];
    assert_eq!(stored["fields"], fields, "stored byte for byte");
    assert_eq!(stored["comments"][0]["text"], "name: 10 keys");
}

#[test]
fn a_store_refusal_mid_batch_keeps_nothing_of_the_batch() {
    let p = project();
    p.fire("t", "{\"n\": 1}");
    let id = p.records("t")[0]["id"].as_str().unwrap().to_string();
    // The second line updates a record that does not exist: the whole input is refused
    // before anything is stored.
    let batch = format!("{{\"id\": \"{id}\", \"n\": 7}}\n{{\"id\": \"ghost\", \"n\": 2}}\n");
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--event", "updated"], Some(&batch));
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("line 2") && ran.stderr.contains("ghost"), "{}", ran.stderr);
    assert_eq!(p.records("t")[0]["fields"]["n"], 1, "the valid first line was not applied either");
    let v: Value = p.run(&["runs", "--json"]).json();
    assert_eq!(v, json!([]));
}
