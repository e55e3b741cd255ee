//! Scripts: one shared Rhai [`Engine`](rhai::Engine) with the sandbox limits always on, scripts
//! compiled once to ASTs, and the run of a script with its scope.
//!
//! The sandbox: Rhai has no file or process access of its own; `eval` and module imports are
//! disabled; operations, call depth, string / array / map sizes and wall-clock time are
//! limited per run (`[limits]`). A script that hits a limit fails its run with an error naming
//! the limit; the process carries on.

pub mod api;
pub mod definitions;
mod limits;
pub mod lint;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rhai::{Dynamic, Engine, EvalAltResult, Map, Scope, AST};
use serde_json::Value;

use crate::class::Class;
use crate::diag::Diagnostic;
use crate::record::Record;
pub use api::{Api, Hosts, RunCtx};
pub use limits::LimitsConfig;

/// A hook that registers an embedding program's own functions on the engine.
pub type EngineHook = Arc<dyn Fn(&mut Engine) + Send + Sync>;

/// Why a script run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub message: String,
    /// Transient when the error that ended the script was a host call's that may succeed
    /// later (directory down, HTTP 503, ...): the class travels inside [`HostError`].
    pub class: Class,
}

impl ScriptError {
    /// A permanent error with this message.
    pub fn permanent(message: impl Into<String>) -> ScriptError {
        ScriptError { message: message.into(), class: Class::Permanent }
    }
}

/// The error a host function raises: its message and its [`Class`]. It is the value a
/// script's `catch (e)` receives (`e.message`, `e.transient`, and `${e}` prints the message),
/// and `throw e` raises it again with its class; any other error a script throws is permanent.
#[derive(Debug, Clone, PartialEq, Eq, rhai::CustomType)]
#[rhai_type(name = "HostError")]
pub struct HostError {
    /// The error's text.
    #[rhai_type(readonly)]
    pub message: String,
    #[rhai_type(skip)]
    pub class: Class,
}

impl HostError {
    /// The script error that raises it.
    pub fn raise(self) -> Box<EvalAltResult> {
        Box::new(EvalAltResult::ErrorRuntime(Dynamic::from(self), rhai::Position::NONE))
    }

    fn register(engine: &mut Engine) {
        engine.build_type::<HostError>();
        engine.register_global_module(rhai::exported_module!(host_error_functions).into());
    }
}

/// What a script sees of a [`HostError`] besides its `message`.
#[rhai::export_module]
mod host_error_functions {
    use super::HostError;

    /// Whether trying again later may work: a run that ends with it is retried.
    #[rhai_fn(get = "transient", pure)]
    pub fn transient(e: &mut HostError) -> bool {
        e.class.is_transient()
    }

    /// The error's message.
    #[rhai_fn(name = "to_string", pure)]
    pub fn to_string(e: &mut HostError) -> String {
        e.message.clone()
    }

    /// `HostError("message", transient|permanent)`.
    #[rhai_fn(name = "to_debug", pure)]
    pub fn to_debug(e: &mut HostError) -> String {
        format!("HostError({:?}, {})", e.message, e.class.as_str())
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

thread_local! {
    /// The run being executed on this thread: where `print` goes and whose deadline applies.
    static CURRENT: RefCell<Option<Arc<RunCtx>>> = const { RefCell::new(None) };
}

struct CurrentGuard;

impl CurrentGuard {
    fn set(ctx: Arc<RunCtx>) -> CurrentGuard {
        CURRENT.with(|c| *c.borrow_mut() = Some(ctx));
        CurrentGuard
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// Why the progress callback stopped a script.
const STOP_TIMEOUT: &str = "timeout";
const STOP_MEMORY: &str = "memory";
/// The variables a script's scope starts with (see [`ScriptEngine::run`]); `api` is an [`Api`].
/// Their types and docs, for editors, are [`definitions::SCOPE`], which a test holds to this.
pub const PREDECLARED: [&str; 6] = ["record", "previous", "event", "rule", "params", "api"];

const STOP_TEXT: &str = "text";

thread_local! {
    /// A reason to stop the script on this thread at its next operation, set by a function
    /// that cannot return an error: Rhai falls back to writing a value's whole text itself
    /// when its printing function fails, the very thing the function refused to do.
    static STOP_NEXT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Most bytes of a thrown value's text in a run's error (the rest is cut).
const MAX_ERROR_TEXT: usize = 16 * 1024;

/// `[limits] max_run_bytes` of the run on this thread, when it holds more than that.
pub(crate) fn over_budget_here() -> Option<usize> {
    CURRENT.with(|c| c.borrow().as_ref().filter(|ctx| ctx.over_budget()).map(|ctx| ctx.max_run_bytes))
}

/// A text being written, refused once it would pass its `max` bytes or the run on this thread
/// goes over its memory budget.
struct Bounded {
    out: String,
    max: usize,
}

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.out.len().saturating_add(s.len()) > self.max || over_budget_here().is_some() {
            let mut cut = self.max.saturating_sub(self.out.len()).min(s.len());
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.out.push_str(&s[..cut]);
            return Err(std::fmt::Error);
        }
        self.out.push_str(s);
        Ok(())
    }
}

/// What `write` writes, at most `max` bytes: the text and whether it is whole.
fn bounded(max: usize, write: impl FnOnce(&mut Bounded) -> std::fmt::Result) -> (String, bool) {
    let mut w = Bounded { out: String::new(), max };
    let whole = write(&mut w).is_ok();
    (w.out, whole)
}

/// The text of a value as Rhai prints it (`debug`: as `to_debug` writes it), or `None` when it
/// would pass `max` bytes or the run on this thread goes over its memory budget while it is
/// written. A value can hold one string many times over (`a[i] = s` shares `s`, and Rhai
/// checks sizes only when a value passes through some calls and operators), so its text can
/// be far larger than the memory it holds: it is bounded while it is written, never built
/// whole first.
pub fn value_text(value: &Dynamic, debug: bool, max: usize) -> Option<String> {
    let (text, whole) = bounded(max, |w| if debug { write!(w, "{value:?}") } else { write!(w, "{value}") });
    whole.then_some(text)
}

/// Registers Rhai's printing of arrays and maps (`to_string`, `to_debug`, `print`, `debug`,
/// string interpolation, `+` and `+=` with a string) and `to_json`, bounded: Rhai's own build
/// the whole text before checking its size. A text that would pass `max_string_size` (or the
/// run's memory budget) stops the script at its next operation with that limit's error.
///
/// The value that was too large to print is emptied too: Rhai checks the size of a value it
/// passed by reference after the call, and on failure writes the value's whole text itself
/// (interpolation and `+` do), which is the very thing refused here. The script is stopped
/// anyway.
fn register_bounded_printing(engine: &mut Engine, max_string_size: usize) {
    let max = if max_string_size == 0 { usize::MAX } else { max_string_size };
    /// A container that prints itself as Rhai does, and can be emptied.
    trait Printable: Clone + Send + Sync + 'static {
        fn write(&self, w: &mut Bounded) -> std::fmt::Result;
        fn empty(&mut self);
    }
    impl Printable for rhai::Array {
        fn write(&self, w: &mut Bounded) -> std::fmt::Result {
            write!(w, "{self:?}")
        }
        fn empty(&mut self) {
            self.clear();
        }
    }
    impl Printable for Map {
        fn write(&self, w: &mut Bounded) -> std::fmt::Result {
            w.write_str("#")?;
            write!(w, "{self:?}")
        }
        fn empty(&mut self) {
            self.clear();
        }
    }
    fn text_of<T: Printable>(value: &mut T, max: usize) -> String {
        let (text, whole) = bounded(max, |w| value.write(w));
        if whole {
            return text;
        }
        let why = if over_budget_here().is_some() { STOP_MEMORY } else { STOP_TEXT };
        STOP_NEXT.with(|s| s.set(Some(why)));
        value.empty();
        String::new()
    }
    fn register<T: Printable>(engine: &mut Engine, max: usize) {
        use rhai::{FuncRegistration, ImmutableString};
        for name in ["to_string", "to_debug", "print", "debug"] {
            FuncRegistration::new(name)
                .with_purity(true)
                .register_into_engine(engine, move |v: &mut T| text_of(v, max));
        }
        FuncRegistration::new("+").with_purity(true).register_into_engine(
            engine,
            move |s: &mut ImmutableString, v: T| -> ImmutableString {
                let mut v = v;
                let text = text_of(&mut v, max.saturating_sub(s.len()));
                format!("{s}{text}").into()
            },
        );
        FuncRegistration::new("+").with_purity(true).register_into_engine(
            engine,
            move |v: &mut T, s: ImmutableString| -> ImmutableString {
                let text = text_of(v, max.saturating_sub(s.len()));
                format!("{text}{s}").into()
            },
        );
        // Rhai leaves the return type of a function that returns `()` unnamed, and its
        // definitions would say `-> ;`: the parameters and `()` are named here.
        let value = engine.map_type_name(std::any::type_name::<T>()).to_string();
        for name in ["+=", "append"] {
            let info = ["string: &mut string".to_string(), format!("value: {value}"), "()".to_string()];
            FuncRegistration::new(name).with_params_info(info).register_into_engine(
                engine,
                move |s: &mut ImmutableString, v: T| {
                    let mut v = v;
                    let text = text_of(&mut v, max.saturating_sub(s.len()));
                    *s = format!("{s}{text}").into();
                },
            );
        }
    }
    register::<rhai::Array>(engine, max);
    register::<Map>(engine, max);
    // Named by hand, as below: Rhai's definitions read a `Result<T, ...>` return type by its
    // last path segment, `EvalAltResult>>`.
    let info = ["map: &mut map", "String"];
    rhai::FuncRegistration::new("to_json").with_params_info(info).register_into_engine(
        engine,
        move |m: &mut Map| -> Result<String, Box<EvalAltResult>> {
            let value = dynamic_to_json(&Dynamic::from_map(m.clone()))?;
            let text = serde_json::to_string(&value).map_err(|e| e.to_string())?;
            match text.len() > max {
                true => Err(EvalAltResult::ErrorDataTooLarge("Length of string".into(), rhai::Position::NONE).into()),
                false => Ok(text),
            }
        },
    );
}

/// Rhai's `sleep(seconds)` blocks its thread for as long as it is asked, past the run's time
/// limit (and panics on a huge float): this one waits at most until the run's deadline, and a
/// wait that reaches it stops the script as the time limit does.
fn register_bounded_sleep(engine: &mut Engine) {
    use rhai::FuncRegistration;
    fn sleep(seconds: f64) -> Result<(), Box<EvalAltResult>> {
        let Some(deadline) = CURRENT.with(|c| c.borrow().as_ref().map(|ctx| ctx.deadline)) else {
            return Err("sleep is only available while a script runs".into());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let asked = std::time::Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(std::time::Duration::MAX);
        std::thread::sleep(asked.min(left));
        if asked >= left {
            return Err(EvalAltResult::ErrorTerminated(Dynamic::from(STOP_TIMEOUT), rhai::Position::NONE).into());
        }
        Ok(())
    }
    // The parameters and the return type are named by hand, for Rhai's definitions (which would
    // read `Result<(), ...>` as `EvalAltResult>>`).
    FuncRegistration::new("sleep")
        .with_params_info(["seconds: int", "()"])
        .register_into_engine(engine, |seconds: rhai::INT| sleep(seconds as f64));
    FuncRegistration::new("sleep")
        .with_params_info(["seconds: float", "()"])
        .register_into_engine(engine, |seconds: rhai::FLOAT| sleep(seconds));
}

/// The shared engine and its limits.
pub struct ScriptEngine {
    engine: Engine,
    limits: LimitsConfig,
    /// What the engine has registered (the embedder's functions included), for the checks.
    functions: lint::Functions,
}

/// What a script sees besides `api`.
pub struct Invocation<'a> {
    pub record: Option<&'a Record>,
    pub previous: Option<&'a Record>,
    pub event: &'a str,
    pub rule: &'a str,
    pub params: &'a serde_json::Map<String, Value>,
}

impl ScriptEngine {
    /// Builds the engine: limits, sandbox, the host API, then the embedder's hooks.
    pub fn new(limits: &LimitsConfig, hooks: &[EngineHook]) -> ScriptEngine {
        let mut engine = Engine::new();
        engine.set_max_operations(limits.max_operations);
        engine.set_max_call_levels(limits.max_call_depth);
        engine.set_max_string_size(limits.max_string_size);
        engine.set_max_array_size(limits.max_array_size);
        engine.set_max_map_size(limits.max_map_size);
        engine.set_max_expr_depths(128, 64);
        engine.disable_symbol("eval");
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.on_print(|s| {
            CURRENT.with(|c| {
                if let Some(ctx) = &*c.borrow() {
                    ctx.log("info", s);
                }
            })
        });
        engine.on_debug(|s, _, pos| {
            CURRENT.with(|c| {
                if let Some(ctx) = &*c.borrow() {
                    ctx.log("debug", &format!("{s} ({pos})"));
                }
            })
        });
        engine.on_progress(|ops| {
            if let Some(why) = STOP_NEXT.with(|s| s.take()) {
                return Some(Dynamic::from(why));
            }
            CURRENT.with(|c| {
                let ctx = c.borrow();
                let ctx = ctx.as_ref()?;
                // The budget is two counter reads, so it is checked before every operation: no
                // single operation can take a run far past it. The clock costs more.
                if ctx.over_budget() {
                    return Some(Dynamic::from(STOP_MEMORY));
                }
                (ops % 512 == 0 && Instant::now() > ctx.deadline).then(|| Dynamic::from(STOP_TIMEOUT))
            })
        });
        HostError::register(&mut engine);
        register_bounded_printing(&mut engine, limits.max_string_size);
        register_bounded_sleep(&mut engine);
        api::register(&mut engine);
        for hook in hooks {
            hook(&mut engine);
        }
        let functions = lint::Functions::of(&engine);
        ScriptEngine { engine, limits: limits.clone(), functions }
    }

    /// The engine, to evaluate expressions in tests and tools.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// Compiles a script file's text; on failure, a diagnostic at Rhai's position. The AST
    /// carries the path, so that run-time errors name it.
    pub fn compile(&self, path: &Path, source: &str) -> Result<AST, Diagnostic> {
        let mut ast = self.engine.compile(source).map_err(|e| {
            let pos = e.position();
            let (line, col) = (pos.line().unwrap_or(1), pos.position().unwrap_or(1));
            Diagnostic::at(path, line, col, format!("{}{}", e.err_type(), quote_hint(source, line)))
        })?;
        ast.set_source(path.display().to_string());
        Ok(ast)
    }

    /// The mistakes of a compiled script that would stop it at run time (see [`lint`]), with
    /// the names `tripline.toml` configures.
    pub fn lint(&self, path: &Path, ast: &AST, names: &lint::KnownNames) -> Vec<Diagnostic> {
        let api = Some(std::any::TypeId::of::<Api>());
        let scope = PREDECLARED.map(|name| (name, if name == "api" { api } else { None }));
        let known =
            lint::Known { functions: &self.functions, names, scope: &scope, api: std::any::TypeId::of::<Api>() };
        lint::lint(path, ast, &known)
    }

    /// Compiles a `when` guard expression; on failure, Rhai's message and position.
    pub fn compile_guard(&self, source: &str) -> Result<AST, (String, usize, usize)> {
        self.engine.compile_expression(source).map_err(|e| {
            let pos = e.position();
            let line = pos.line().unwrap_or(1);
            (format!("{}{}", e.err_type(), quote_hint(source, line)), line, pos.position().unwrap_or(1))
        })
    }

    fn scope<'s>(&self, inv: &Invocation) -> Scope<'s> {
        let mut scope = Scope::new();
        scope.push("record", inv.record.map_or(Dynamic::UNIT, |r| Dynamic::from_map(record_to_map(r))));
        scope.push("previous", inv.previous.map_or(Dynamic::UNIT, |r| Dynamic::from_map(record_to_map(r))));
        scope.push("event", Dynamic::from(inv.event.to_string()));
        scope.push("rule", Dynamic::from(inv.rule.to_string()));
        scope.push("params", Dynamic::from_map(json_map_to_rhai(inv.params)));
        scope
    }

    /// Evaluates a `when` guard (no `api`: a guard decides, it does not act).
    pub fn eval_guard(&self, ast: &AST, inv: &Invocation, ctx: Arc<RunCtx>) -> Result<bool, ScriptError> {
        let _current = CurrentGuard::set(ctx.clone());
        ctx.start_on_this_thread();
        caught(|| {
            let mut scope = self.scope(inv);
            let result = self.engine.eval_ast_with_scope::<bool>(&mut scope, ast);
            self.ended(result, ast.source())
        })
    }

    /// Runs a script to its end.
    pub fn run(&self, ast: &AST, inv: &Invocation, ctx: Arc<RunCtx>) -> Result<Dynamic, ScriptError> {
        let _current = CurrentGuard::set(ctx.clone());
        ctx.start_on_this_thread();
        caught(|| {
            let mut scope = self.scope(inv);
            scope.push("api", Api::dynamic(ctx.clone()));
            let result = self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast);
            self.ended(result, ast.source())
        })
    }

    /// A script's result, or the error that stopped it, also when a stop was asked for after
    /// its last operation.
    fn ended<T>(&self, result: Result<T, Box<EvalAltResult>>, source: Option<&str>) -> Result<T, ScriptError> {
        let stop = STOP_NEXT.with(|s| s.take());
        match (result, stop) {
            (Err(e), _) => Err(self.error(*e, source)),
            (Ok(_), Some(why)) => {
                Err(self.error(EvalAltResult::ErrorTerminated(why.into(), rhai::Position::NONE), source))
            }
            (Ok(v), None) => Ok(v),
        }
    }

    /// Rhai's error in words an admin can act on, naming the limit that stopped the script.
    /// A script's error (its AST carries its path) starts with `path:line:col:` at the place
    /// that failed, inside a function too, followed by the calls that led there; a guard's
    /// ends with Rhai's `(line L, position C)`.
    fn error(&self, e: EvalAltResult, source: Option<&str>) -> ScriptError {
        let class = class_of(&e);
        let message = match source {
            None => self.describe(&e, true),
            Some(path) => {
                let mut calls = Vec::new();
                let mut inner = e;
                while let EvalAltResult::ErrorInFunctionCall(name, _, err, pos) = inner {
                    calls.push((name, pos));
                    inner = *err;
                }
                let pos = inner.position();
                let mut message = match (pos.line(), pos.position()) {
                    (Some(line), Some(col)) => format!("{path}:{line}:{col}: "),
                    (Some(line), None) => format!("{path}:{line}: "),
                    _ => format!("{path}: "),
                };
                message.push_str(&self.describe(&inner, false));
                // Innermost first: the function that failed, then who called it.
                for (name, at) in calls.iter().rev() {
                    let what =
                        if name.starts_with("anon$") { "a closure".to_string() } else { format!("function `{name}`") };
                    let at = match (at.line(), at.position()) {
                        (Some(line), Some(col)) => format!(" called at {line}:{col}"),
                        _ => String::new(),
                    };
                    message.push_str(&format!(" (in {what}{at})"));
                }
                message
            }
        };
        ScriptError { message: crate::secret::redact(&message).into_owned(), class }
    }

    /// One error's words; its position in Rhai's form at the end when `with_position`.
    fn describe(&self, e: &EvalAltResult, with_position: bool) -> String {
        let l = &self.limits;
        let at = |pos: rhai::Position| {
            if pos.is_none() || !with_position {
                String::new()
            } else {
                format!(" ({pos})")
            }
        };
        match e {
            EvalAltResult::ErrorTooManyOperations(pos) => format!(
                "script stopped after {} operations: the limit is [limits] max_operations = {}{}",
                l.max_operations,
                l.max_operations,
                at(*pos)
            ),
            EvalAltResult::ErrorTerminated(why, pos)
                if why.clone().into_string().ok().as_deref() == Some(STOP_MEMORY) =>
            {
                format!(
                    "script stopped: the run held more than [limits] max_run_bytes = {} bytes (its values, log lines and writes){}",
                    l.max_run_bytes,
                    at(*pos)
                )
            }
            EvalAltResult::ErrorTerminated(why, pos)
                if why.clone().into_string().ok().as_deref() == Some(STOP_TEXT) =>
            {
                format!(
                    "script stopped: the text of a value grew longer than [limits] max_string_size = {}{}",
                    l.max_string_size,
                    at(*pos)
                )
            }
            EvalAltResult::ErrorTerminated(_, pos) => {
                format!("script stopped: it ran longer than [limits] timeout_ms = {}{}", l.timeout_ms, at(*pos))
            }
            EvalAltResult::ErrorStackOverflow(pos) => format!(
                "script stopped: calls nested deeper than [limits] max_call_depth = {}{}",
                l.max_call_depth,
                at(*pos)
            ),
            EvalAltResult::ErrorDataTooLarge(what, pos) => {
                let limit = match what.as_str() {
                    w if w.contains("string") || w.contains("String") => {
                        format!("max_string_size = {}", l.max_string_size)
                    }
                    w if w.contains("array") || w.contains("Array") => format!("max_array_size = {}", l.max_array_size),
                    w if w.contains("map") || w.contains("Map") || w.contains("object") => {
                        format!("max_map_size = {}", l.max_map_size)
                    }
                    _ => format!(
                        "max_string_size = {}, max_array_size = {}, max_map_size = {}",
                        l.max_string_size, l.max_array_size, l.max_map_size
                    ),
                };
                format!("script stopped: {what} grew larger than [limits] {limit}{}", at(*pos))
            }
            EvalAltResult::ErrorRuntime(value, pos) => match value.read_lock::<HostError>() {
                Some(host) => format!("{}{}", host.message, at(*pos)),
                None => format!("{}{}", error_text(|w| write!(w, "{value}")), at(*pos)),
            },
            other if with_position => error_text(|w| write!(w, "{other}")),
            // Rhai's words without Rhai's "(line L, position C)", which the path replaces.
            other => {
                let text = error_text(|w| write!(w, "{other}"));
                match other.position() {
                    pos if pos.is_none() => text,
                    pos => text.strip_suffix(&format!(" ({pos})")).map(str::to_string).unwrap_or(text),
                }
            }
        }
    }
}

/// An error's text, cut at [`MAX_ERROR_TEXT`] bytes.
fn error_text(write: impl FnOnce(&mut Bounded) -> std::fmt::Result) -> String {
    match bounded(MAX_ERROR_TEXT, write) {
        (text, true) => text,
        (text, false) => format!("{text}… (cut)"),
    }
}

/// Runs a script, turning a panic (a bug in a host function or in the engine, never the
/// script's fault) into the run's failure: the run is recorded as failed, and the thread, the
/// event and the queue carry on.
fn caught<T>(f: impl FnOnce() -> Result<T, ScriptError>) -> Result<T, ScriptError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        tracing::error!(panic = %what, "A host function panicked; the run fails.");
        Err(ScriptError::permanent(format!(
            "internal error (a bug in tripline, not in the script): {}",
            crate::secret::redact(&what)
        )))
    })
}

/// The class of the error that ended a script: a host error's own, found through the calls
/// it was raised in; every other error is permanent.
fn class_of(e: &EvalAltResult) -> Class {
    match e {
        EvalAltResult::ErrorRuntime(value, _) => value.read_lock::<HostError>().map_or(Class::Permanent, |h| h.class),
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) => {
            class_of(inner)
        }
        _ => Class::Permanent,
    }
}

/// A hint when a compile error's line has typographic quotes, as text copied from a
/// document or a chat often does.
fn quote_hint(source: &str, line: usize) -> String {
    let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
    if text.contains(['“', '”', '‘', '’', '«', '»', '„']) {
        "; hint: this line has typographic quotes (“ ” ‘ ’), which Rhai does not read as quotes; use straight quotes (\")".into()
    } else {
        String::new()
    }
}

/// A record as scripts see it: its fields as top-level keys, beside `id`, `entity`, `status`.
pub fn record_to_map(r: &Record) -> Map {
    let mut m = json_map_to_rhai(&r.fields);
    m.insert("id".into(), Dynamic::from(r.id.clone()));
    m.insert("entity".into(), Dynamic::from(r.entity.clone()));
    m.insert("status".into(), Dynamic::from(r.status.as_str().to_string()));
    m
}

/// JSON to a Rhai value.
pub fn json_to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        Value::Object(o) => Dynamic::from_map(json_map_to_rhai(o)),
    }
}

/// A JSON object to a Rhai map.
pub fn json_map_to_rhai(o: &serde_json::Map<String, Value>) -> Map {
    o.iter().map(|(k, v)| (k.as_str().into(), json_to_dynamic(v))).collect()
}

/// A Rhai value to JSON (`()` is null, a character a string; other host types are refused),
/// nested at most [`record::MAX_DEPTH`](crate::record::MAX_DEPTH) levels: a value that goes
/// deeper is refused here, before anything walks it further.
pub fn dynamic_to_json(d: &Dynamic) -> Result<Value, String> {
    to_json_at(d, 1)
}

fn to_json_at(d: &Dynamic, depth: usize) -> Result<Value, String> {
    use crate::record::MAX_DEPTH;
    let too_deep = || format!("the value is nested more than {MAX_DEPTH} levels deep");
    // A value can hold one string many times over: its JSON copy is counted as it is made.
    if let Some(max) = over_budget_here() {
        return Err(format!(
            "the value takes more memory than the run may hold ([limits] max_run_bytes = {max} bytes)"
        ));
    }
    if d.is_shared() {
        return to_json_at(&d.flatten_clone(), depth);
    }
    if d.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = d.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = d.as_float() {
        return serde_json::Number::from_f64(f).map(Value::Number).ok_or_else(|| format!("not a JSON value: {f}"));
    }
    if let Ok(c) = d.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if let Some(s) = d.read_lock::<rhai::ImmutableString>() {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(a) = d.read_lock::<rhai::Array>() {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        return a.iter().map(|v| to_json_at(v, depth + 1)).collect::<Result<_, _>>().map(Value::Array);
    }
    if let Some(m) = d.read_lock::<Map>() {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        let mut out = serde_json::Map::with_capacity(m.len());
        for (k, v) in m.iter() {
            out.insert(k.to_string(), to_json_at(v, depth + 1)?);
        }
        return Ok(Value::Object(out));
    }
    if let Some(b) = d.read_lock::<rhai::Blob>() {
        return Ok(Value::Array(b.iter().map(|x| Value::from(*x)).collect()));
    }
    Err(format!("not a JSON value: a {}", d.type_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_errors_point_at_the_place_and_hint_at_typographic_quotes() {
        let e = ScriptEngine::new(&LimitsConfig::default(), &[]);
        let d = e
            .compile(Path::new("s.rhai"), "let x = 1;\napi.ProcessFlexHrUserOnAD(record, “ActiveDirectory”);\n")
            .unwrap_err();
        assert_eq!((d.line, d.col > 1), (2, true), "{d}");
        assert!(d.message.contains("typographic quotes"), "{d}");
        let d = e.compile(Path::new("s.rhai"), "let x = ;").unwrap_err();
        assert_eq!(d.line, 1);
        assert!(!d.message.contains("typographic"));
    }

    fn run(source: &str) -> (Result<Dynamic, ScriptError>, Vec<String>) {
        run_within(source, std::time::Duration::from_secs(5))
    }

    fn run_within(source: &str, time: std::time::Duration) -> (Result<Dynamic, ScriptError>, Vec<String>) {
        let engine = ScriptEngine::new(&LimitsConfig::default(), &[]);
        let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::sqlite::SqliteStore::in_memory().unwrap());
        let deadline = Instant::now() + time;
        let ctx = Arc::new(RunCtx::new(store, Arc::new(api::Hosts::default()), "r", deadline, false));
        let ast = engine.compile(Path::new("t.rhai"), source).unwrap();
        let params = serde_json::Map::new();
        let inv = Invocation { record: None, previous: None, event: "manual", rule: "r", params: &params };
        let result = engine.run(&ast, &inv, ctx.clone());
        (result, ctx.log_lines().into_iter().map(|l| l.message).collect())
    }

    #[test]
    fn a_host_errors_class_travels_with_it_and_a_scripts_own_error_is_permanent() {
        let class = |src: &str| run(src).0.unwrap_err().class;
        assert_eq!(class(r#"api.retry_later("later");"#), Class::Transient);
        // Caught, then the script fails on its own: permanent, whatever was caught before.
        assert_eq!(class(r#"try { api.retry_later("later") } catch (e) {} throw "mine";"#), Class::Permanent);
        assert_eq!(class(r#"try { api.retry_later("later") } catch (e) {} let x = 1 / 0;"#), Class::Permanent);
        // Thrown again, it keeps its class, also out of a function.
        assert_eq!(class(r#"try { api.retry_later("later") } catch (e) { throw e; }"#), Class::Transient);
        assert_eq!(class("fn f(api) { api.retry_later(\"later\") }\nf(api);"), Class::Transient);
        let (result, log) = run(
            r#"try { api.retry_later("why") } catch (e) { api.info("got " + e); api.info(`${e}`); api.info(e.message); api.info(e.transient); }"#,
        );
        assert!(result.is_ok());
        assert_eq!(log, ["got why", "why", "why", "true"]);
        // The place comes first now (it used to follow the message as Rhai's "(line 1,
        // position 5)"); the host's message follows it unchanged.
        let e = run(r#"api.retry_later("why");"#).0.unwrap_err();
        assert_eq!(e.message, "t.rhai:1:5: why", "{e}");
    }

    #[test]
    fn a_run_time_error_names_the_script_line_and_column_also_inside_functions() {
        let message = |src: &str| run(src).0.unwrap_err().message;
        let m = message("let x = 1;\n    api.coment(record, \"t\");");
        assert!(m.starts_with("t.rhai:2:9: Function not found: coment (Api, "), "{m}");
        assert!(!m.contains("line 2"), "the place is said once: {m}");
        let m = message("fn helper(api) {\n  api.retry_later(\"why\")\n}\nfn outer(api) { helper(api) }\nouter(api);");
        assert_eq!(m, "t.rhai:2:7: why (in function `helper` called at 4:17) (in function `outer` called at 5:1)");
        assert_eq!(message("throw \"mine\";"), "t.rhai:1:1: mine");
        let m = message("let f = |x| x / 0;\nf.call(1);");
        assert!(m.starts_with("t.rhai:1:15: Division by zero") && m.ends_with("(in a closure called at 2:3)"), "{m}");
        assert!(message("let a = [];\na[3]").starts_with("t.rhai:2:3: Array index 3 out of bounds"));
    }

    #[test]
    fn json_round_trips_through_rhai() {
        let v = serde_json::json!({"a": 1, "b": [true, null, "x"], "c": {"d": 1.5}});
        assert_eq!(dynamic_to_json(&json_to_dynamic(&v)).unwrap(), v);
    }

    /// An array holding one 1 MiB string `n` times: little memory, a text of `n` MiB.
    const SHARED: &str = "let s = \"x\"; for i in 0..20 { s += s; }\nlet a = []; for i in 0..N { a.push(1); }\n\
                          for i in 0..N { a[i] = s; }\nlet m = #{}; for i in 0..N { m[`k${i}`] = s; }\n";

    #[test]
    fn the_text_of_a_value_is_bounded_while_it_is_written() {
        let s = Dynamic::from("x".repeat(1 << 20));
        let a = Dynamic::from_array(vec![s; 100_000]);
        assert_eq!(value_text(&a, false, 4096), None, "100 GiB of text are never built");
        let small = Dynamic::from_array(vec![Dynamic::from("x"), Dynamic::from_int(1)]);
        assert_eq!(value_text(&small, false, 4096).as_deref(), Some("[\"x\", 1]"));
        assert_eq!(value_text(&small, true, 4096).as_deref(), Some("[\"x\", 1]"));
    }

    #[test]
    fn printing_a_value_whose_text_is_too_long_stops_the_script_in_every_spelling() {
        let shared = SHARED.replace('N', "40");
        for spelling in [
            "let t = `${a}`;",
            "let t = `${m}`;",
            "let t = \"\" + a;",
            "let t = a + \"\";",
            "let t = \"\" + m;",
            "let t = \"\"; t += a;",
            "print(a);",
            "debug(m);",
            "let t = a.to_string();",
            "let t = m.to_debug();",
            "let t = to_string(a);",
            "let b = [0]; b[0] = a; let t = `${b}`;",
        ] {
            let (result, _) = run(&format!("{shared}{spelling}"));
            let e = result.unwrap_err();
            assert!(e.message.contains("max_string_size"), "{spelling}: {e}");
        }
        let (result, _) = run(&format!("{}api.info(a);", SHARED.replace('N', "100")));
        assert!(result.unwrap_err().message.contains("max_run_bytes"), "a log line is bounded by the budget");
        let (result, _) = run(&format!("{shared}throw a;"));
        let e = result.unwrap_err();
        assert!(e.message.len() < 2 * MAX_ERROR_TEXT && e.message.contains("(cut)"), "{}", e.message.len());
        // Printing what fits is unchanged.
        let (result, log) =
            run("print([1, \"x\", #{a: ()}, 2.0, true]); print(`${[1]}${#{b: \"c\"}}`); print(\"s\" + [2]); \
             let t = \"t\"; t += #{k: 1}; print(t); const C = [3]; print(C.to_string()); api.info([4]);");
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            log,
            ["[1, \"x\", #{\"a\": ()}, 2.0, true]", "[1]#{\"b\": \"c\"}", "s[2]", "t#{\"k\": 1}", "[3]", "[4]"]
        );
    }

    #[test]
    fn sleep_ends_at_the_runs_deadline() {
        for spelling in ["sleep(1e300);", "sleep(9223372036854775807);", "sleep(3600);"] {
            let started = Instant::now();
            let (result, _) = run_within(spelling, std::time::Duration::from_millis(300));
            let e = result.unwrap_err();
            assert!(e.message.contains("timeout_ms"), "{spelling}: {e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(60), "{spelling} returned");
        }
        let (result, _) = run("sleep(0.01); sleep(-5); sleep(0); 1");
        assert!(result.is_ok(), "{result:?}");
    }
}
