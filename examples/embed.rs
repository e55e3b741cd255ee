//! tripline embedded in another program: rules and scripts written in code, a host function
//! of the program's own on `api`, events fed in, runs read back. Run with
//! `cargo run --example embed`.

use std::sync::Arc;

use tripline::config::{Config, EngineConfig};
use tripline::record::{from_value, EventKind};
use tripline::runtime::Runtime;
use tripline::script::Api;
use tripline::store::sqlite::SqliteStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("tripline-embed-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rules"))?;
    std::fs::create_dir_all(dir.join("scripts"))?;
    std::fs::write(
        dir.join("rules/assets.toml"),
        r#"
name = "Look up the asset of new incidents"
entity = "incident"
conditions = [{ field = "Created", op = "equals", value = true }, { field = "Asset", op = "exists" }]
script = "assets.rhai"
"#,
    )?;
    std::fs::write(
        dir.join("scripts/assets.rhai"),
        r#"
let owner = api.asset_owner(record.Asset);
api.update(record, #{ Owner: owner });
api.comment(record, `Asset ${record.Asset} belongs to ${owner}.`);
"#,
    )?;

    let config = Config::with_engine(EngineConfig {
        rules_dir: dir.join("rules"),
        scripts_dir: dir.join("scripts"),
        ..EngineConfig::default()
    });
    let runtime = Runtime::builder()
        .config(config)
        // An in-memory store: the program keeps nothing between starts.
        .store(Arc::new(SqliteStore::in_memory()?))
        // The program's own host function, beside the built-in ones.
        .register(|engine| {
            engine.register_fn("asset_owner", |api: &mut Api, asset: &str| -> String {
                api.ctx().log("info", &format!("looking up {asset}"));
                if asset.starts_with("LT-") {
                    "IT Operations".into()
                } else {
                    "Facilities".into()
                }
            });
        })
        .build()?;

    let record = from_value(serde_json::json!({ "Asset": "LT-0042", "Title": "Screen flickers" }))?;
    let runs = runtime.fire("incident", EventKind::Created, record)?;
    for run in &runs {
        println!("{} -> {} ({} log lines)", run.rule, run.status.as_str(), run.log.len());
    }
    let id = runs[0].record_id.clone().expect("a rule run has a record");
    let stored = runtime.store().get_record(&id)?.expect("stored");
    println!("Owner = {}; comment: {}", stored.fields["Owner"], stored.comments[0].text);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
