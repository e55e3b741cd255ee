//! P1's workload: 200 rules (`event_type equals eN and department equals dM`, 20 x 10 pairs,
//! each running `let x = 1;`) and N events, 80 % of which match one rule.

const EVENT_TYPES: usize = 20;
const DEPARTMENTS: usize = 10;

/// A project with `config` as its tripline.toml, the 200 rules, and `n` events in
/// events.jsonl (a fixed sequence: every run sees the same events).
pub fn project(config: &str, n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("tripline.toml"), config).unwrap();
    std::fs::write(dir.path().join("scripts/x.rhai"), "let x = 1;\n").unwrap();
    for e in 0..EVENT_TYPES {
        for d in 0..DEPARTMENTS {
            std::fs::write(
                dir.path().join(format!("rules/r_{e}_{d}.toml")),
                format!(
                    "name = \"r_{e}_{d}\"\nentity = \"event\"\nscript = \"x.rhai\"\nconditions = [\n  \
                     {{ field = \"event_type\", op = \"equals\", value = \"e{e}\" }},\n  \
                     {{ field = \"department\", op = \"equals\", value = \"d{d}\" }},\n]\n"
                ),
            )
            .unwrap();
        }
    }
    // A fixed sequence (an LCG), so that every run sees the same events.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |m: usize| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % m
    };
    let mut lines = String::with_capacity(n * 64);
    for i in 0..n {
        let e = next(EVENT_TYPES);
        let department = if next(10) < 8 { format!("d{}", next(DEPARTMENTS)) } else { "none".to_string() };
        lines.push_str(&format!("{{\"event_type\":\"e{e}\",\"department\":\"{department}\",\"n\":{i}}}\n"));
    }
    std::fs::write(dir.path().join("events.jsonl"), lines).unwrap();
    dir
}
