//! The command line: `tripline run | check | fire | test | runs | replay | records | ...`.
//!
//! Each command returns an [`ExitCode`]-like status: 0 when all went well, 1 when a run
//! failed or the input was refused (with a one-line error), 2 for usage errors (clap).

use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::catalog::Catalog;
use crate::config::{Config, EngineConfig};
use crate::diag::Diagnostic;
use crate::record::{from_value, EventKind};
use crate::runtime::Runtime;
use crate::script::lint::KnownNames;
use crate::script::ScriptEngine;
use crate::secret::Secrets;
use crate::store::{Ingest, Run, RunFilter, RunStatus};

/// tripline: rules and scripts for IT service management and identity automation.
#[derive(Debug, Parser)]
#[command(name = "tripline", version, about)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "tripline.toml", env = "TRIPLINE_CONFIG")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: dispatcher, scheduler, webhooks and hot reload, until Ctrl-C or SIGTERM.
    Run,
    /// Validates the configuration, rules and scripts; every problem as path:line:col.
    Check,
    /// Stores records as events and runs the rules they trigger now.
    Fire(FireArgs),
    /// Dry run: which rules match a record and why, and what their scripts would write.
    Test(TestArgs),
    /// Run history.
    Runs(RunsArgs),
    /// Runs a failed or dead run again.
    Replay {
        /// The run's id, as `tripline runs` shows it (`15` or `#15`).
        run_id: String,
    },
    /// Records and tickets.
    #[command(subcommand)]
    Records(RecordsCommand),
    /// The rules in force.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Scheduled jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// HTTP connections.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// The audit trail: every directory change, with each attribute's value before and after.
    Audit(AuditArgs),
    /// Copies the store, consistently, while the daemon runs.
    Backup {
        /// Where to write the copy (must not exist).
        path: PathBuf,
    },
    /// Writes Rhai definition files (.d.rhai) of the host API and a script's scope, for
    /// completion and docs in an editor.
    Definitions {
        /// The folder to write them to (created if needed; files of the same names replaced).
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct FireArgs {
    /// The entity of the records (`ticket`, ...).
    pub entity: String,
    /// A JSON file: one record, or JSON Lines (one record per line); `-` reads stdin.
    #[arg(long)]
    pub record: String,
    /// The event: created, updated (the record carries its `id`), deleted, or a custom name.
    #[arg(long, default_value = "created")]
    pub event: String,
    /// Only store the events; the daemon (`tripline run`) runs them.
    #[arg(long)]
    pub queue: bool,
    /// Print only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the runs as JSON Lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The rule to test.
    #[arg(required_unless_present = "cases", conflicts_with = "cases")]
    pub rule: Option<String>,
    /// A JSON file holding one record; `-` reads stdin.
    #[arg(long, required_unless_present = "cases", conflicts_with = "cases")]
    pub record: Option<String>,
    /// Runs every case file (TOML) in this folder: a record, an event and what must happen;
    /// exit 1 when a case fails.
    #[arg(long)]
    pub cases: Option<PathBuf>,
    /// The event to simulate.
    #[arg(long, default_value = "created")]
    pub event: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs that did not end ok (failed, retrying, dead).
    #[arg(long)]
    pub failed: bool,
    /// Only this rule's runs (or `job:NAME`).
    #[arg(long)]
    pub rule: Option<String>,
    /// Only this record's runs.
    #[arg(long)]
    pub record: Option<String>,
    /// The most recent N runs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes of this entry (its DN when changed; compared without regard to case).
    #[arg(long)]
    pub dn: Option<String>,
    /// Only changes made by runs on this record.
    #[arg(long)]
    pub record: Option<String>,
    /// Only changes since this time: RFC 3339 (`2025-05-01T10:00:00Z`), a date (`2025-05-01`,
    /// UTC), or a span back from now (`7d`, `12h`, `30m`).
    #[arg(long)]
    pub since: Option<String>,
    /// The most recent N changes (0: all; a year of changes may be large).
    #[arg(long, default_value_t = AUDIT_LIMIT)]
    pub limit: usize,
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// One line per attribute changed, as CSV with a header.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Records of an entity, newest last.
    List {
        entity: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One record with its comments.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Every rule loaded, in priority order, with its conditions; files in error after them.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// The configured jobs: schedule, enabled, next run, last run and its status.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Runs a job once, now, and then the rules its writes trigger.
    Run {
        name: String,
        /// Print the runs as JSON Lines.
        #[arg(long)]
        json: bool,
        /// Run the whole job as `tripline test` runs a rule: GETs are sent, writes are only
        /// planned, the records it would write go to the rules they would trigger, also dry.
        /// Nothing is written and the job's state does not move.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// The configured connections: auth type, OAuth2 token state; never a secret.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Sends the connection's configured test request; prints status, time and a body excerpt.
    Test { name: String },
    /// OAuth2 authorization code: prints the login URL, waits for the callback, stores tokens.
    Authorize {
        name: String,
        /// How long to wait for the login, in seconds.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// OAuth2: revokes the stored tokens at the provider (when `revoke_url` is set) and
    /// deletes them.
    Revoke { name: String },
}

/// A command's failure: a message for stderr, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { message: e.to_string(), code: 1 }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Check => check(&cli.config),
        Command::Run => {
            // The daemon runs scripts on the runtime's blocking threads: script stacks.
            let stack = crate::memory::script_stack_bytes(configured_max_run_bytes(&cli.config));
            let io = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(stack).build()?;
            // The daemon uses everything it is configured with: every secret must be set.
            let runtime = build_on(&cli.config, Some(io.handle().clone()), Secrets::Resolve)?;
            run_blocking(io, runtime)
        }
        Command::Job(JobCommand::Run { name, json, dry_run: true }) => job_dry_run(&build(&cli.config)?, &name, json),
        Command::Job(JobCommand::Run { name, json, dry_run: false }) => job_run(&build(&cli.config)?, &name, json),
        Command::Job(JobCommand::List { json }) => job_list(&build(&cli.config)?, json),
        Command::Rules(RulesCommand::List { json }) => rules_list(&build(&cli.config)?, json),
        Command::Connection(ConnectionCommand::List { json }) => connection_list(&build(&cli.config)?, json),
        Command::Connection(ConnectionCommand::Test { name }) => connection_test(&build(&cli.config)?, &name),
        Command::Connection(ConnectionCommand::Authorize { name, wait }) => {
            connection_authorize(&build(&cli.config)?, &name, wait)
        }
        Command::Connection(ConnectionCommand::Revoke { name }) => connection_revoke(&build(&cli.config)?, &name),
        Command::Fire(args) => fire(&build(&cli.config)?, args),
        Command::Test(args) => test(&build(&cli.config)?, args),
        Command::Runs(args) => runs(&open_store(&cli.config)?, args),
        Command::Replay { run_id } => replay(&cli.config, &run_id),
        Command::Records(cmd) => records(&open_store(&cli.config)?, cmd),
        Command::Backup { path } => backup(&open_store(&cli.config)?, &path),
        Command::Definitions { dir } => definitions(&dir),
        Command::Audit(args) => audit(&open_store(&cli.config)?, args),
    }
}

/// `tripline run`: the daemon on the given tokio runtime until Ctrl-C or SIGTERM.
pub fn run_blocking(io: tokio::runtime::Runtime, runtime: Runtime) -> Result<u8, Failure> {
    io.block_on(crate::daemon::run(Arc::new(runtime), crate::daemon::shutdown_signal()))?;
    Ok(0)
}

/// `[limits] max_run_bytes` as the configuration file says, or the default: what the stacks
/// of script threads are sized for before the configuration is validated.
pub fn configured_max_run_bytes(config: &Path) -> usize {
    #[derive(serde::Deserialize, Default)]
    struct Limits {
        max_run_bytes: Option<usize>,
    }
    #[derive(serde::Deserialize)]
    struct OnlyLimits {
        #[serde(default)]
        limits: Limits,
    }
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| toml::from_str::<OnlyLimits>(&text).ok())
        .and_then(|c| c.limits.max_run_bytes)
        .unwrap_or_else(|| crate::script::LimitsConfig::default().max_run_bytes)
}

/// A runtime for a command that runs scripts now (`fire`, `test`, `job run`, `replay`,
/// `connection ...`): secrets are resolved by what uses them, so a connection whose password
/// is not set in this shell fails only the runs that call it.
fn build(config: &Path) -> Result<Runtime, Failure> {
    build_on(config, None, Secrets::Defer)
}

fn build_on(config: &Path, handle: Option<tokio::runtime::Handle>, secrets: Secrets) -> Result<Runtime, Failure> {
    let mut builder = Runtime::builder().config_file(config).secrets(secrets);
    if let Some(h) = handle {
        builder = builder.handle(h);
    }
    builder
        .build()
        .map_err(|e| Failure { message: format!("{e}\n(run `tripline check` for the full report)"), code: 1 })
}

/// What a read-only command works with: the configuration as far as it locates things, and
/// the store. Nothing else is built: no rule, script or secret is needed to read history or
/// copy the store, so these commands work while a file is broken or a secret is unset.
struct ReadOnly {
    config: Config,
    store: std::sync::Arc<dyn crate::store::Store>,
}

fn open_store(config_path: &Path) -> Result<ReadOnly, Failure> {
    let source = Config::read(config_path).map_err(diagnostics)?;
    // Problems of the sections (the ones `check` reports) do not stop reading the history.
    let (config, _) = Config::parse_with(&source, config_path, Secrets::Defer).map_err(diagnostics)?;
    let store = crate::store::open(config.store.as_ref(), &config.engine.data_dir)?;
    Ok(ReadOnly { config, store })
}

fn diagnostics(d: Vec<Diagnostic>) -> Failure {
    Failure { message: crate::diag::Diagnostics(d).to_string(), code: 1 }
}

/// Every problem of the configuration, rules and scripts (and the example folders).
pub fn check_all(config_path: &Path) -> (Vec<Diagnostic>, String) {
    let mut diags = Vec::new();
    // The names scripts may use: unknown (not checked) when the configuration does not parse.
    let mut names = KnownNames::default();
    let config = match Config::read(config_path).and_then(|src| Config::parse(&src, config_path)) {
        Ok((config, d)) => {
            diags.extend(d);
            names = config.known_names();
            config
        }
        Err(d) => {
            diags.extend(d);
            // Check the default folders beside the file anyway: their problems are real too.
            let base = config_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let d = EngineConfig::default();
            let engine = EngineConfig {
                rules_dir: base.join(d.rules_dir),
                scripts_dir: base.join(d.scripts_dir),
                data_dir: base.join(d.data_dir),
                ..d
            };
            Config::with_engine(engine)
        }
    };
    let engine = ScriptEngine::new(&config.limits, &[]);
    let (catalog, d) = Catalog::load(&engine, &config.engine.rules_dir, &config.engine.scripts_dir, &names);
    diags.extend(d);
    diags.extend(catalog.warnings.iter().cloned());
    let mut examples = 0;
    // A folder that does not exist is a problem of `[engine] check_dirs`, at its line.
    for dir in config.engine.check_dirs.iter().filter(|d| d.join("rules").is_dir() || d.join("scripts").is_dir()) {
        // Example folders come with their own configuration: their names are not this one's.
        let (c, d) = Catalog::load(&engine, &dir.join("rules"), &dir.join("scripts"), &KnownNames::default());
        examples += c.rules.rules().len();
        diags.extend(d);
    }
    diags.extend(crate::runtime::wire(&config, &catalog).1);
    let summary = format!(
        "ok: {} rules, {} scripts, {} directories, {} connections, {} jobs, {} webhooks{}",
        catalog.rules.rules().len(),
        catalog.scripts.len(),
        config.directories.len(),
        config.connections.len(),
        config.jobs.len(),
        config.webhooks.len(),
        if examples > 0 { format!(" ({examples} example rules checked)") } else { String::new() }
    );
    (diags, summary)
}

fn check(config: &Path) -> Result<u8, Failure> {
    let (diags, summary) = check_all(config);
    for d in &diags {
        println!("{d}");
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    if errors == 0 {
        match warnings {
            0 => println!("{summary}"),
            n => println!("{summary}; {}", plural(n, "warning")),
        }
        return Ok(0);
    }
    match warnings {
        0 => println!("{} found", plural(errors, "problem")),
        n => println!("{} and {} found", plural(errors, "problem"), plural(n, "warning")),
    }
    Ok(1)
}

/// Opens a record source: a file, or stdin for `-`.
fn open_input(spec: &str) -> Result<Box<dyn Read>, Failure> {
    if spec == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        return Ok(Box::new(std::io::Cursor::new(buf)));
    }
    let f = std::fs::File::open(spec).map_err(|e| Failure { message: format!("cannot read {spec}: {e}"), code: 1 })?;
    Ok(Box::new(f))
}

/// Reads a stream of JSON values (one record, or JSON Lines), calling `each` with the value,
/// its size in bytes and its 1-based line.
fn each_record(
    input: Box<dyn Read>,
    mut each: impl FnMut(Value, usize, usize) -> Result<(), Failure>,
) -> Result<usize, Failure> {
    let mut reader = BufReader::new(input);
    let mut line_no = 0;
    let mut count = 0;
    let mut buf = String::new();
    let mut pending = String::new();
    let mut start_line = 1;
    loop {
        buf.clear();
        if reader.read_line(&mut buf)? == 0 {
            break;
        }
        line_no += 1;
        if pending.is_empty() && buf.trim().is_empty() {
            continue;
        }
        if pending.is_empty() {
            start_line = line_no;
        }
        pending.push_str(&buf);
        // A line that is a whole value is a JSON Lines record; otherwise keep reading (a
        // pretty-printed single record spans lines).
        match serde_json::from_str::<Value>(&pending) {
            Ok(v) => {
                count += 1;
                each(v, pending.len(), start_line)?;
                pending.clear();
            }
            Err(e) if e.is_eof() => continue,
            Err(e) => {
                return Err(Failure {
                    message: format!("line {}: malformed JSON: {e}", start_line + e.line().saturating_sub(1)),
                    code: 1,
                })
            }
        }
    }
    if !pending.trim().is_empty() {
        let e = serde_json::from_str::<Value>(&pending).err().map(|e| e.to_string()).unwrap_or_default();
        return Err(Failure { message: format!("line {start_line}: malformed JSON: {e}"), code: 1 });
    }
    if count == 0 {
        return Err(Failure { message: "no record in the input".into(), code: 1 });
    }
    Ok(count)
}

/// How many records `fire` stores per transaction.
const FIRE_BATCH: usize = 500;

fn fire(rt: &Runtime, args: FireArgs) -> Result<u8, Failure> {
    let kind = EventKind::from(args.event.clone());
    let max = rt.config().engine.max_record_bytes;
    let item = |value: Value, size: usize, line: usize| -> Result<Ingest, Failure> {
        let at = |m: String| Failure { message: format!("line {line}: {m}"), code: 1 };
        if size > max {
            return Err(at(format!(
                "record is {size} bytes, larger than the {max}-byte limit ([engine] max_record_bytes)"
            )));
        }
        let record = from_value(value).map_err(at)?;
        Ok(Ingest { entity: args.entity.clone(), kind: kind.clone(), record, idempotency_key: None })
    };
    // Pass 1: refuse bad input before anything is stored. Stdin is buffered so it can be
    // read twice; files are streamed twice, so memory stays flat for any batch size.
    let input = open_input(&args.record)?;
    let (first, second): (Box<dyn Read>, Box<dyn Read>) = if args.record == "-" {
        let mut buf = Vec::new();
        let mut input = input;
        input.read_to_end(&mut buf)?;
        (Box::new(std::io::Cursor::new(buf.clone())), Box::new(std::io::Cursor::new(buf)))
    } else {
        (input, open_input(&args.record)?)
    };
    // What the input itself does to ids, with the line: the records it creates (two lines
    // creating one id are refused here, and an update of a record created earlier in the input
    // is not) and the records it deletes (a later line naming one is refused here, rather than
    // by the store once the batches before it were stored). A custom event with an id names a
    // stored record, as an update does.
    let mut created: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut total = 0;
    let mut deleted: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    each_record(first, |v, size, line| {
        let i = item(v, size, line)?;
        total += 1;
        let at = |m: String| Failure { message: format!("line {line}: {m}"), code: 1 };
        match (&i.record.id, &i.kind) {
            // A new record without an id cannot clash with anything.
            (None, EventKind::Created) => return Ok(()),
            (Some(id), _) if deleted.contains_key(id) => {
                return Err(at(format!("record {id:?} is deleted by line {} before this one", deleted[id])));
            }
            (Some(id), EventKind::Created) => {
                if let Some(first) = created.get(id) {
                    return Err(at(format!("the input creates a record with id {id:?} twice (first on line {first})")));
                }
                created.insert(id.clone(), line);
            }
            (Some(id), EventKind::Deleted) => {
                deleted.insert(id.clone(), line);
                if created.contains_key(id) {
                    return Ok(());
                }
            }
            (Some(id), _) if created.contains_key(id) => return Ok(()),
            _ => {}
        }
        rt.store().validate(&i).map_err(|e| at(e.to_string()))
    })?;
    drop((created, deleted));

    // Pass 2: store in batches and run them on the dispatcher's workers, keeping a bounded
    // window of events in flight (memory stays flat for any batch size).
    if args.queue {
        let mut events = 0;
        let mut batch = Vec::with_capacity(FIRE_BATCH);
        let mut lines = (0, 0);
        each_record(second, |v, size, line| {
            note_line(&mut lines, batch.is_empty(), line);
            batch.push(item(v, size, line)?);
            if batch.len() >= FIRE_BATCH {
                events += store_batch(rt, &mut batch, lines, None)?.len();
            }
            Ok(())
        })?;
        events += store_batch(rt, &mut batch, lines, None)?.len();
        println!("{events} event{} stored for the daemon", plural(events));
        return Ok(0);
    }
    let report = Arc::new(FireReport::new(total, &args));
    let options = {
        let report = report.clone();
        crate::dispatch::Options::own(rt).on_done(move |_, runs| report.done(runs))
    };
    let events = crate::dispatch::drain(rt, options, |d| -> Result<usize, Failure> {
        let mut events = 0;
        let mut batch = Vec::with_capacity(FIRE_BATCH);
        let mut lines = (0, 0);
        let mut flush = |batch: &mut Vec<Ingest>, lines| -> Result<(), Failure> {
            d.wait_below(FIRE_WINDOW);
            events += d.submit(rt, |owner| {
                let stored = store_batch(rt, batch, lines, Some(owner))?;
                Ok::<_, Failure>((stored.len(), stored))
            })?;
            Ok(())
        };
        each_record(second, |v, size, line| {
            note_line(&mut lines, batch.is_empty(), line);
            batch.push(item(v, size, line)?);
            if batch.len() >= FIRE_BATCH {
                flush(&mut batch, lines)?;
            }
            Ok(())
        })?;
        flush(&mut batch, lines)?;
        Ok(events)
    })??;
    report.finish();
    let [ok, failed, retrying, dead] = report.counts();
    if !args.json {
        let runs = ok + failed + retrying + dead;
        println!(
            "{events} event{} stored, {runs} run{}: {ok} ok, {failed} failed, {retrying} retrying, {dead} dead",
            plural(events),
            plural(runs),
        );
    }
    Ok(if failed + retrying + dead > 0 { 1 } else { 0 })
}

/// How many lines `fire` keeps in flight at most: a few batches.
const FIRE_WINDOW: usize = 4 * FIRE_BATCH;

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Notes the first and last line of the batch being gathered.
fn note_line(lines: &mut (usize, usize), first: bool, line: usize) {
    if first {
        lines.0 = line;
    }
    lines.1 = line;
}

/// Stores a batch of `fire` input (claimed by `owner` when given) and empties it; returns how
/// many events were stored.
fn store_batch(
    rt: &Runtime,
    batch: &mut Vec<Ingest>,
    lines: (usize, usize),
    owner: Option<&str>,
) -> Result<Vec<crate::record::Event>, Failure> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // The whole input was checked before; what can still fail here is the store itself (a
    // full disk), and the message says what was stored before.
    let stored = match owner {
        Some(owner) => rt.submit_claimed(batch, owner),
        None => rt.submit(batch),
    }
    .map_err(|e| {
        let before =
            if lines.0 > 1 { format!("; the records before line {} were stored", lines.0) } else { String::new() };
        Failure { message: format!("lines {}-{}: nothing of them was stored: {e}{before}", lines.0, lines.1), code: 1 }
    })?;
    batch.clear();
    Ok(stored.into_iter().flatten().collect())
}

/// What `fire` shows while its runs finish on the workers: each event's runs as they end
/// (text, or JSON Lines), and the progress on standard error: a bar on a terminal, a line
/// every few seconds otherwise.
struct FireReport {
    json: bool,
    quiet: bool,
    counts: [std::sync::atomic::AtomicUsize; 4],
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: std::sync::atomic::AtomicUsize,
    started: std::time::Instant,
    last_line: std::sync::Mutex<std::time::Instant>,
}

/// How often `fire` says how far it is when standard error is not a terminal.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl FireReport {
    fn new(total: usize, args: &FireArgs) -> FireReport {
        use std::io::IsTerminal;
        // A bar only for a person watching a batch (a single record is over at once).
        let bar = (std::io::stderr().is_terminal() && total > 1).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events, {per_sec}, eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        FireReport {
            json: args.json,
            quiet: args.quiet,
            counts: Default::default(),
            bar,
            total,
            done: Default::default(),
            started: std::time::Instant::now(),
            last_line: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// An event's runs finished (called by the workers).
    fn done(&self, runs: &[Run]) {
        use std::sync::atomic::Ordering::Relaxed;
        for run in runs {
            self.counts[run.status as usize].fetch_add(1, Relaxed);
        }
        if !self.quiet || self.json {
            let print = || -> std::io::Result<()> {
                let mut out = std::io::stdout().lock();
                for run in runs {
                    if self.json {
                        writeln!(out, "{}", serde_json::to_string(run)?)?;
                    } else {
                        print_run(&mut out, run)?;
                    }
                }
                Ok(())
            };
            // A closed pipe (`| head`) is no reason to stop running.
            let _ = match &self.bar {
                Some(bar) => bar.suspend(print),
                None => print(),
            };
        }
        let done = self.done.fetch_add(1, Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.set_position(done.min(self.total) as u64),
            None if self.total > 1 => {
                let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= PROGRESS_EVERY {
                    *last = std::time::Instant::now();
                    let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
                    eprintln!("fire: {done} of {} events done ({rate:.0}/s)", self.total);
                }
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn counts(&self) -> [usize; 4] {
        self.counts.each_ref().map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn print_run(out: &mut impl std::io::Write, run: &Run) -> std::io::Result<()> {
    let record = run.record_id.as_deref().unwrap_or("-");
    write!(out, "{:<8} {}  record {}  {} ms", run.status.as_str(), run.rule, record, run.duration_ms)?;
    if run.attempts > 1 {
        write!(out, "  attempt {}", run.attempts)?;
    }
    if let Some(next) = run.next_attempt_at {
        write!(out, "  next attempt {}", next.format("%Y-%m-%d %H:%M:%S UTC"))?;
    }
    writeln!(out)?;
    for line in &run.log {
        writeln!(out, "    {:<5} {}", line.level, line.message)?;
    }
    if let Some(e) = &run.error {
        writeln!(out, "    error: {e}")?;
    }
    Ok(())
}

/// `tripline test --cases DIR`: each case file's verdict, the differences of those that fail.
fn test_cases(rt: &Runtime, dir: &Path, json: bool) -> Result<u8, Failure> {
    let files = crate::cases::case_files(dir)?;
    let results: Vec<crate::cases::CaseResult> = files.iter().map(|f| crate::cases::run_case(rt, f)).collect();
    let failed = results.iter().filter(|r| !r.passed).count();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&results)?)?;
    } else {
        for r in &results {
            writeln!(out, "{}  {}", if r.passed { "ok  " } else { "FAIL" }, r.file.display())?;
            for p in &r.problems {
                writeln!(out, "      {p}")?;
            }
        }
        let n = results.len();
        writeln!(out, "{n} case{}: {} passed, {failed} failed", plural(n), n - failed)?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn test(rt: &Runtime, args: TestArgs) -> Result<u8, Failure> {
    let (rule, record) = match (&args.cases, args.rule, args.record) {
        (Some(dir), _, _) => return test_cases(rt, dir, args.json),
        (None, Some(rule), Some(record)) => (rule, record),
        _ => return Err(Failure { message: "test needs RULE and --record FILE, or --cases DIR".into(), code: 2 }),
    };
    let catalog = rt.catalog();
    let entity = match catalog.rules.find(&rule) {
        Some(r) => r.entity.clone(),
        None => String::new(),
    };
    let mut values = Vec::new();
    each_record(open_input(&record)?, |v, _, _| {
        values.push(v);
        Ok(())
    })?;
    if values.len() != 1 {
        return Err(Failure { message: format!("`test` takes one record; the input holds {}", values.len()), code: 1 });
    }
    let record = from_value(values.pop().expect("one value"))?;
    let report = rt.explain(&entity, EventKind::from(args.event.clone()), record, Some(&rule))?;
    // A run that would not end ok fails the command, so that `test` can gate a change.
    let code = if report.iter().any(|ex| ex.outcome.is_some_and(|s| s != RunStatus::Ok)) { 1 } else { 0 };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    for ex in &report {
        println!("rule {:?}: {}", ex.rule, if ex.matched { "matches" } else { "does not match" });
        for c in &ex.conditions {
            let value = c.value.as_ref().map(|v| format!(" {v}")).unwrap_or_default();
            let actual = c.actual.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "(absent)".into());
            println!(
                "  [{}] {} {}{}  (record has {})",
                if c.holds { "yes" } else { "no " },
                c.field,
                c.op,
                value,
                actual
            );
        }
        match &ex.when {
            Some(Ok(b)) => println!("  [{}] when guard", if *b { "yes" } else { "no " }),
            Some(Err(e)) => println!("  [err] when guard: {e}"),
            None => {}
        }
        if !ex.matched {
            continue;
        }
        for l in &ex.log {
            println!("  log {:<5} {}", l.level, l.message);
        }
        let ok = ex.outcome == Some(RunStatus::Ok);
        if let Some(e) = &ex.error {
            let how = if ex.outcome == Some(RunStatus::Retrying) { "fail (and be retried)" } else { "fail" };
            println!("  the run would {how}: {e}");
        }
        match (ok, ex.write_lines.is_empty()) {
            (true, true) => println!("  the run would write nothing"),
            (true, false) => println!("  the run would write (nothing was written):"),
            (false, true) => println!("  nothing would be written"),
            (false, false) => println!("  a failed run writes only these (nothing was written):"),
        }
        for w in &ex.write_lines {
            println!("    {w}");
        }
        if !ex.planned.is_empty() {
            println!("  it would change these systems (nothing was changed):");
            for p in &ex.planned {
                println!("    {p}");
            }
        }
    }
    Ok(code)
}

fn runs(ro: &ReadOnly, args: RunsArgs) -> Result<u8, Failure> {
    let filter = RunFilter { failed: args.failed, rule: args.rule.clone(), record_id: args.record, limit: args.limit };
    let runs = ro.store.runs(&filter)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(0);
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    for run in &runs {
        write!(out, "#{} {} ", run.id, run.started_at.format("%Y-%m-%d %H:%M:%S"))?;
        print_run(&mut out, run)?;
    }
    if runs.is_empty() {
        // A job's runs are `job:NAME`: the likely slip is the job's bare name.
        let hint = match &args.rule {
            Some(r) if !r.starts_with("job:") && ro.config.declared.jobs.contains(r) => {
                format!(" (runs of job {r} are listed with --rule job:{r})")
            }
            _ => String::new(),
        };
        writeln!(out, "no runs{hint}")?;
    }
    Ok(0)
}

/// A run id as `tripline runs` prints it (`#15`) or as a number.
fn parse_run_id(text: &str) -> Result<i64, Failure> {
    text.trim().trim_start_matches('#').parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| Failure {
        message: format!("{text:?} is not a run id: give the number `tripline runs` shows, as 15 or #15"),
        code: 1,
    })
}

fn replay(config: &Path, run_id: &str) -> Result<u8, Failure> {
    let run_id = parse_run_id(run_id)?;
    // The run is looked up before anything is built, so that a wrong id is said as such.
    let Some(previous) = open_store(config)?.store.get_run(run_id)? else {
        return Err(Failure { message: format!("no run with id {run_id}"), code: 1 });
    };
    let rt = &build(config)?;
    if previous.status == RunStatus::Ok {
        return Err(Failure {
            message: format!("run {run_id} ended ok; only failed, retrying or dead runs are replayed"),
            code: 1,
        });
    }
    if previous.rule == crate::store::SET_ASIDE {
        rt.replay(run_id, "")?;
        println!("event {} is queued again; the daemon (`tripline run`) processes it", previous.event_id.unwrap_or(0));
        return Ok(0);
    }
    // The run again, then what its writes raise, on the dispatcher.
    let (failed, options) = printing_runs(false);
    let run = crate::dispatch::drain(rt, options(rt), |d| -> Result<Run, Failure> {
        let run = rt
            .replay(run_id, d.owner())?
            .ok_or_else(|| Failure { message: "the rule's `when` guard no longer holds".into(), code: 1 })?;
        print_run(&mut std::io::stdout(), &run)?;
        d.wake();
        Ok(run)
    })??;
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    Ok(if run.status == RunStatus::Ok && failed == 0 { 0 } else { 1 })
}

/// Dispatcher options that print each finished run (text, or JSON Lines), and the count of
/// those that did not end ok.
fn printing_runs(
    json: bool,
) -> (Arc<std::sync::atomic::AtomicUsize>, impl FnOnce(&Runtime) -> crate::dispatch::Options) {
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = failed.clone();
    let options = move |rt: &Runtime| {
        crate::dispatch::Options::own(rt).on_done(move |_, runs| {
            let mut out = std::io::stdout().lock();
            for run in runs {
                if run.status != RunStatus::Ok {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // A closed pipe is no reason to stop running.
                let _ = if json {
                    writeln!(out, "{}", serde_json::to_string(run).unwrap_or_default())
                } else {
                    print_run(&mut out, run)
                };
            }
        })
    };
    (failed, options)
}

fn records(ro: &ReadOnly, cmd: RecordsCommand) -> Result<u8, Failure> {
    match cmd {
        RecordsCommand::List { entity, limit, json } => {
            let found = ro.store.find_records(&entity, &Default::default(), limit)?;
            if found.is_empty() {
                let known = ro.store.entities()?;
                // Rules that load name entities too (a broken rule file just says nothing).
                let engine = ScriptEngine::new(&ro.config.limits, &[]);
                let (catalog, _) = Catalog::load(
                    &engine,
                    &ro.config.engine.rules_dir,
                    &ro.config.engine.scripts_dir,
                    &KnownNames::default(),
                );
                let in_rules = catalog.rules.rules().iter().any(|r| r.entity == entity);
                if !known.contains(&entity) && !in_rules {
                    let hint = match crate::diag::did_you_mean(&entity, known.iter().map(String::as_str)) {
                        Some(s) => format!("; did you mean {s:?}?"),
                        None if known.is_empty() => "; the store has no records yet".into(),
                        None => format!("; entities with records: {}", known.join(", ")),
                    };
                    return Err(Failure { message: format!("unknown entity {entity:?}{hint}"), code: 1 });
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                for r in &found {
                    let summary: Vec<String> = r.fields.iter().take(4).map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{}  {:<6}  {}  {}",
                        r.id,
                        r.status.as_str(),
                        r.updated_at.format("%Y-%m-%d %H:%M:%S"),
                        summary.join(" ")
                    );
                }
                println!("{} record{}", found.len(), if found.len() == 1 { "" } else { "s" });
            }
        }
        RecordsCommand::Show { id, json } => {
            let r = ro
                .store
                .get_record(&id)?
                .ok_or_else(|| Failure { message: format!("no record with id {id:?}"), code: 1 })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{} {}  {}", r.entity, r.id, r.status.as_str());
                println!("created {}  updated {}", r.created_at, r.updated_at);
                for (k, v) in &r.fields {
                    println!("  {k}: {v}");
                }
                for c in &r.comments {
                    println!("  comment {}: {}", c.at.format("%Y-%m-%d %H:%M:%S"), c.text);
                }
            }
        }
    }
    Ok(0)
}

/// `tripline definitions DIR`: the engine's definition files. They describe the host API,
/// which no configuration changes, so no configuration is read.
fn definitions(dir: &Path) -> Result<u8, Failure> {
    let engine = ScriptEngine::new(&crate::script::LimitsConfig::default(), &[]);
    let written = engine
        .write_definitions(dir)
        .map_err(|e| Failure { message: format!("cannot write definitions to {}: {e}", dir.display()), code: 1 })?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    Ok(0)
}

/// `--since`: a time, a date, or a span back from now.
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    let t = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if let Ok(span) = humantime::parse_duration(t) {
        if let Some(at) = chrono::Duration::from_std(span).ok().and_then(|d| chrono::Utc::now().checked_sub_signed(d)) {
            return Ok(at);
        }
    }
    Err(Failure {
        message: format!(
            "--since {text:?} is not a time: give RFC 3339 (2025-05-01T10:00:00Z), a date (2025-05-01) or a span (7d, 12h)"
        ),
        code: 1,
    })
}

/// How many changes `tripline audit` shows unless told otherwise.
const AUDIT_LIMIT: usize = 1000;

fn audit(ro: &ReadOnly, args: AuditArgs) -> Result<u8, Failure> {
    let query = crate::store::AuditQuery {
        dn: args.dn.as_deref().map(|dn| {
            crate::directory::dn::Dn::parse(dn.trim()).map_or_else(|_| dn.trim().to_lowercase(), |d| d.key())
        }),
        record_id: args.record.clone(),
        run_id: None,
        since: args.since.as_deref().map(parse_since).transpose()?,
        limit: args.limit,
    };
    let entries = ro.store.audit(&query)?;
    if args.limit > 0 && entries.len() >= args.limit {
        eprintln!("the newest {} changes; --limit N (0 for all) or --since to see others", entries.len());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
        return Ok(0);
    }
    if args.csv {
        let mut w = csv::Writer::from_writer(out);
        w.write_record([
            "id",
            "at",
            "directory",
            "dn",
            "operation",
            "planned",
            "attribute",
            "before",
            "after",
            "detail",
            "run_id",
            "rule",
            "record_id",
            "event_id",
        ])?;
        for e in &entries {
            let at = e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let row = |attribute: &str, before: String, after: String| {
                vec![
                    e.id.to_string(),
                    at.clone(),
                    e.directory.clone(),
                    e.dn.clone(),
                    e.operation.clone(),
                    e.planned.to_string(),
                    attribute.to_string(),
                    before,
                    after,
                    e.detail.clone().unwrap_or_default(),
                    e.run_id.map(|id| id.to_string()).unwrap_or_default(),
                    e.rule.clone(),
                    e.record_id.clone().unwrap_or_default(),
                    e.event_id.map(|id| id.to_string()).unwrap_or_default(),
                ]
            };
            if e.attributes.is_empty() {
                w.write_record(row("", String::new(), String::new()))?;
            }
            for a in &e.attributes {
                let before = a.before.as_ref().map(|v| v.join("; ")).unwrap_or_else(|| "(not read)".into());
                w.write_record(row(&a.attribute, before, a.after.join("; ")))?;
            }
        }
        w.flush()?;
        return Ok(0);
    }
    for e in &entries {
        write_audit_entry(&mut out, e)?;
    }
    if entries.is_empty() {
        writeln!(out, "no directory changes")?;
    }
    Ok(0)
}

/// An audit entry as `tripline audit` prints it: a line for the change, one per attribute.
pub fn write_audit_entry(out: &mut impl std::io::Write, e: &crate::store::AuditEntry) -> std::io::Result<()> {
    let run = match (e.run_id, &e.record_id) {
        (Some(id), Some(record)) => format!("run #{id} of {:?} on record {record}", e.rule),
        (Some(id), None) => format!("run #{id} of {:?}", e.rule),
        (None, Some(record)) => format!("{:?} on record {record} (its run was not stored)", e.rule),
        (None, None) => format!("{:?} (its run was not stored)", e.rule),
    };
    let planned = if e.planned { " (planned: dry run, nothing changed)" } else { "" };
    writeln!(
        out,
        "{}  {}  {} {}{planned}  by {run}",
        e.at.format("%Y-%m-%d %H:%M:%S UTC"),
        e.directory,
        e.operation,
        e.dn
    )?;
    for a in &e.attributes {
        writeln!(out, "    {a}")?;
    }
    if let Some(d) = &e.detail {
        writeln!(out, "    {d}")?;
    }
    Ok(())
}

fn backup(ro: &ReadOnly, to: &Path) -> Result<u8, Failure> {
    if to.exists() {
        return Err(Failure { message: format!("{} already exists", to.display()), code: 1 });
    }
    ro.store.backup(to)?;
    println!("store copied to {}", to.display());
    Ok(0)
}

/// Runs a job now. A disabled job runs too, with a note: naming it is the way to try a job
/// before switching it on, and `enabled` is about the schedule.
fn job_run(rt: &Runtime, name: &str, json: bool) -> Result<u8, Failure> {
    if rt.jobs().get(name).is_some_and(|job| !job.enabled) {
        eprintln!(
            "note: job {name} is disabled (enabled = false): it runs once now because it was named; \
             the scheduler does not run it"
        );
    }
    // The job's run first, then the runs of the rules its writes trigger, as they finish.
    let (failed, options) = printing_runs(json);
    let run = crate::dispatch::drain(rt, options(rt), |d| -> Result<Run, Failure> {
        let (run, _raised) = rt.run_job(name, "manual", d.owner())?;
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&run)?)?;
        } else {
            print_run(&mut out, &run)?;
        }
        d.wake();
        Ok(run)
    })??;
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    Ok(if run.status == RunStatus::Ok && failed == 0 { 0 } else { 1 })
}

/// `tripline job run NAME --dry-run`: the job's planned writes, then each record's rules.
fn job_dry_run(rt: &Runtime, name: &str, json: bool) -> Result<u8, Failure> {
    let report = rt.dry_run_job(name)?;
    let not_ok = report.outcome != RunStatus::Ok
        || report.triggered.iter().flat_map(|t| &t.rules).any(|ex| ex.outcome.is_some_and(|s| s != RunStatus::Ok));
    let code = if not_ok { 1 } else { 0 };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(code);
    }
    writeln!(out, "job {name} (dry run: nothing is written): the run would end {}", report.outcome.as_str())?;
    for l in &report.log {
        writeln!(out, "  log {:<5} {}", l.level, l.message)?;
    }
    if let Some(e) = &report.error {
        writeln!(out, "  the run would fail: {e}")?;
    }
    match report.write_lines.is_empty() {
        true => writeln!(out, "  the run would write nothing")?,
        false => writeln!(out, "  the run would write:")?,
    }
    for w in &report.write_lines {
        writeln!(out, "    {w}")?;
    }
    if !report.planned.is_empty() {
        writeln!(out, "  it would change these systems:")?;
        for p in &report.planned {
            writeln!(out, "    {p}")?;
        }
    }
    for t in &report.triggered {
        writeln!(out, "{} {} ({}):", t.entity, t.record_id, t.event)?;
        for ex in &t.rules {
            let outcome = ex.outcome.map_or("not run", RunStatus::as_str);
            writeln!(out, "  rule {:?} matches; its run would end {outcome}", ex.rule)?;
            if let Some(e) = &ex.error {
                writeln!(out, "    error: {e}")?;
            }
            for w in &ex.write_lines {
                writeln!(out, "    would {w}")?;
            }
            for p in &ex.planned {
                writeln!(out, "    {p}")?;
            }
        }
    }
    let runs: usize = report.triggered.iter().map(|t| t.rules.len()).sum();
    writeln!(
        out,
        "{} record{} would trigger {runs} rule run{}; nothing was written",
        report.triggered.len(),
        plural(report.triggered.len()),
        plural(runs)
    )?;
    Ok(code)
}

fn rules_list(rt: &Runtime, json: bool) -> Result<u8, Failure> {
    let rules = rt.rule_statuses();
    let catalog = rt.catalog();
    let problems: Vec<String> = catalog.problems.iter().map(ToString::to_string).collect();
    let mut out = std::io::stdout().lock();
    if json {
        let report = serde_json::json!({ "rules": rules, "files_in_error": problems });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(0);
    }
    for r in &rules {
        let off = if r.enabled { "" } else { "  (disabled)" };
        writeln!(out, "{:>4}  {}  [{}]  {} -> {}{off}", r.priority, r.name, r.entity, r.file, r.script)?;
        for c in &r.conditions {
            writeln!(out, "        {c}")?;
        }
        if let Some(w) = &r.when {
            writeln!(out, "        when {w}")?;
        }
    }
    writeln!(out, "{} rule{}", rules.len(), plural(rules.len()))?;
    for p in &problems {
        writeln!(out, "in error: {p}")?;
    }
    Ok(0)
}

fn job_list(rt: &Runtime, json: bool) -> Result<u8, Failure> {
    let jobs = rt.job_statuses(chrono::Utc::now())?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&jobs)?)?;
        return Ok(0);
    }
    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    for j in &jobs {
        let next = match (j.enabled, j.next_run) {
            (false, _) => "disabled".to_string(),
            (true, Some(t)) => format!("next {}", at(t)),
            (true, None) => "no next run".to_string(),
        };
        let last = match &j.last_run {
            Some(r) => format!("last #{} {} {}", r.id, r.status.as_str(), at(r.started_at)),
            None => "never ran".to_string(),
        };
        writeln!(out, "{}  {:?}  {}  {next}  {last}", j.name, j.schedule, j.script)?;
    }
    if jobs.is_empty() {
        writeln!(out, "no jobs")?;
    }
    Ok(0)
}

fn connection_list(rt: &Runtime, json: bool) -> Result<u8, Failure> {
    let connections = rt.connection_statuses();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&connections)?)?;
        return Ok(0);
    }
    for c in &connections {
        match &c.unavailable {
            Some(why) => writeln!(out, "{}  unavailable: {why}", c.name)?,
            None => {
                let off = if c.enabled { "" } else { "  (disabled)" };
                let token = c.token.as_ref().map(|t| format!("  {t}")).unwrap_or_default();
                writeln!(out, "{}  {}  {}{token}{off}", c.name, c.auth, c.base_url)?;
            }
        }
    }
    if connections.is_empty() {
        writeln!(out, "no connections")?;
    }
    Ok(0)
}

fn connection_of<'r>(
    rt: &'r Runtime,
    name: &str,
) -> Result<&'r std::sync::Arc<crate::connection::Connection>, Failure> {
    rt.hosts().connections.get(name).ok_or_else(|| {
        let names = rt.hosts().connections.keys().map(String::as_str);
        let hint = crate::diag::did_you_mean(name, names).map(|s| format!("; did you mean {s:?}?")).unwrap_or_default();
        Failure { message: format!("no connection named {name:?}{hint}"), code: 1 }
    })
}

fn connection_test(rt: &Runtime, name: &str) -> Result<u8, Failure> {
    let conn = connection_of(rt, name)?;
    let outcome = rt.hosts().block_on(conn.test_connection())??;
    println!("{} {} -> {} in {} ms", outcome.method, outcome.path, outcome.status, outcome.elapsed.as_millis());
    if !outcome.body_excerpt.is_empty() {
        println!("{}", outcome.body_excerpt);
    }
    Ok(if (200..300).contains(&outcome.status) { 0 } else { 1 })
}

fn connection_revoke(rt: &Runtime, name: &str) -> Result<u8, Failure> {
    let conn = connection_of(rt, name)?;
    let asked = rt.hosts().block_on(conn.revoke())??;
    match asked {
        true => println!("Revoked: the provider revoked the tokens of {name:?}, and they are deleted here."),
        false => println!(
            "Revoked: the tokens of {name:?} are deleted here (no auth.revoke_url, or no token was stored: the provider \
             was not asked)."
        ),
    }
    Ok(0)
}

fn connection_authorize(rt: &Runtime, name: &str, wait: u64) -> Result<u8, Failure> {
    let conn = connection_of(rt, name)?;
    rt.hosts().block_on(async {
        let pending = conn.begin_authorization().await?;
        println!("Open this URL in a browser and log in:\n\n  {}\n", pending.url());
        println!("Waiting for the callback on {} ...", pending.redirect_url());
        pending.complete(std::time::Duration::from_secs(wait)).await
    })??;
    println!("Authorized: tokens for {name:?} are stored; they refresh by themselves.");
    Ok(0)
}
