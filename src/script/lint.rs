//! Static checks of scripts: the mistakes that would stop a script at run time, found when it
//! is loaded and by `tripline check`, each a [`Diagnostic`] at `path:line:col` with a likely
//! fix.
//!
//! - a variable that is not defined where it is used (the scope starts with `record`,
//!   `previous`, `event`, `rule`, `params` and `api`; a `fn` sees only its parameters, its own
//!   variables and `global::` constants);
//! - a function that is neither registered nor defined in the script, and a method or property
//!   that `api` or a host handle (a directory, a connection, a `HostError`, or a type an
//!   embedder registers) does not have, with "did you mean";
//! - a directory, connection or notification channel named by a string literal that
//!   `tripline.toml` does not configure;
//! - across files ([`unproduced_entities`]): a rule whose entity no webhook and no script
//!   produces, as a warning (records fired from outside can have any entity).
//!
//! # How
//!
//! The checks walk the AST the engine compiled, the very tree that runs, through Rhai's
//! `internals` (`Stmt`, `Expr`), keeping scopes as Rhai does: blocks, loop and catch
//! variables, shadowing, closures (whose captured variables the parser turns into leading
//! parameters, curried where the closure is written), and functions that start from their
//! parameters alone. A second parser, or patterns over the text, would drift from what Rhai
//! accepts. [`AST::walk`] visits every node but without scopes, so it serves only the
//! scope-free facts (which names are ever assigned, which functions are used as values).
//! The cost of `internals`: Rhai does not keep those types stable between minor versions, so
//! the version is held by Cargo.toml and Cargo.lock, and the tests below, which cover every
//! kind of scope, fail loudly if an upgrade moves the tree.
//!
//! What is registered comes from the engine's own metadata ([`Engine::collect_fn_metadata`]:
//! parameter types as `TypeId`s, return types by name), so the functions an embedder adds
//! with `RuntimeBuilder::register` count like the built-in `api`.
//!
//! Method calls are checked only where the receiver's type is known: `api`, a handle a host
//! function returned (`let ad = api.directory("AD")`), and parameters that every call of a
//! `fn` passes a value of one such type (`fn sync(api, user)` called as `sync(api, u)`). A
//! variable that is ever assigned, or a function that can be called through a pointer, is not
//! typed at all: a false alarm on a working script costs more trust than a missed one.
//!
//! The tree is the optimised one: Rhai drops statements that cannot do anything (`x;`, an
//! empty loop), so a mistake in such code can go unreported.

use std::any::TypeId;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;

use rhai::{
    ASTNode, Dynamic, Engine, Expr, FnCallExpr, FnPtr, ImmutableString, Position, ScriptFuncDef, Shared, Stmt,
    StmtBlock, AST,
};

use crate::diag::{did_you_mean, Diagnostic};

/// The names `tripline.toml` configures (`Config::known_names`), for the checks of the names scripts pass as string
/// literals. `None` where they are not known (an example folder checked beside a
/// configuration it does not use): those names are then not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownNames {
    /// `[directories.NAME]`.
    pub directories: Option<BTreeSet<String>>,
    /// `[connections.NAME]`.
    pub connections: Option<BTreeSet<String>>,
    /// `[notify.NAME]`.
    pub notify: Option<BTreeSet<String>>,
    /// The entities records arrive with from outside scripts: `[webhooks.NAME] entity`.
    pub entities: Option<BTreeSet<String>>,
}

/// Rhai's keyword functions: the engine handles them itself (they are not registered), with
/// any arguments and as methods of any value.
const KEYWORDS: &[&str] =
    &["print", "debug", "type_of", "Fn", "call", "curry", "is_shared", "is_def_var", "is_def_fn", "eval"];

/// A native function's shape, as the engine registered it.
#[derive(Debug, Clone, Copy)]
struct Signature {
    /// Parameters, the receiver of a method call included.
    arity: usize,
    first: Option<TypeId>,
    /// The return type, when it is one of the engine's types.
    returns: Option<TypeId>,
}

/// The functions an engine has, from its metadata: the registered half of what a script can
/// call.
pub struct Functions {
    native: HashMap<String, Vec<Signature>>,
    /// The host types whose methods are checked, by the names scripts see ("Directory").
    host_types: HashMap<TypeId, String>,
}

impl Functions {
    /// Everything `engine` has registered, the standard packages included.
    pub fn of(engine: &Engine) -> Functions {
        struct Meta {
            name: String,
            params: Vec<TypeId>,
            info: Vec<String>,
            returns: String,
        }
        let collect = |standard: bool| {
            engine.collect_fn_metadata(
                None,
                |f| {
                    let m = f.metadata;
                    Some(Meta {
                        name: m.name.to_string(),
                        params: m.param_types.iter().copied().take(m.num_params).collect(),
                        info: m.params_info.iter().map(|s| s.to_string()).collect(),
                        returns: m.return_type.to_string(),
                    })
                },
                standard,
            )
        };
        let all = collect(true);
        let registered = collect(false);
        // The metadata names parameter types as scripts see them ("_: &mut Directory") beside
        // their TypeIds, and return types by Rust name: read the names off the parameters.
        let mut by_name: HashMap<String, TypeId> = HashMap::new();
        for m in &all {
            for (t, info) in m.params.iter().zip(&m.info) {
                by_name.entry(param_type_name(info).to_string()).or_insert(*t);
            }
        }
        let returns = |m: &Meta| by_name.get(engine.map_type_name(result_inner(&m.returns))).copied();
        let mut host_types = HashMap::new();
        for m in &registered {
            if let (Some(t), Some(info)) = (m.params.first(), m.info.first()) {
                if !is_builtin(*t) {
                    host_types.entry(*t).or_insert_with(|| param_type_name(info).to_string());
                }
            }
        }
        let mut native: HashMap<String, Vec<Signature>> = HashMap::new();
        for m in &all {
            let sig = Signature { arity: m.params.len(), first: m.params.first().copied(), returns: returns(m) };
            native.entry(m.name.clone()).or_default().push(sig);
        }
        Functions { native, host_types }
    }

    fn is_host_type(&self, t: TypeId) -> bool {
        self.host_types.contains_key(&t)
    }

    fn type_name(&self, t: TypeId) -> &str {
        self.host_types.get(&t).map_or("value", String::as_str)
    }

    /// The signatures of `name` callable on a `t` with `args` arguments.
    fn methods(&self, name: &str, t: TypeId, args: usize) -> impl Iterator<Item = &Signature> {
        let any = TypeId::of::<Dynamic>();
        self.native
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |s| s.arity == args + 1 && (s.first == Some(t) || s.first == Some(any)))
    }

    /// What calling `name` on a `t` returns, when every such function returns one host type.
    fn method_returns(&self, name: &str, t: TypeId, args: usize) -> Ty {
        let mut out = None;
        for s in self.methods(name, t, args).filter(|s| s.first == Some(t)) {
            match (out, s.returns) {
                (None, Some(r)) if self.is_host_type(r) => out = Some(r),
                (Some(o), Some(r)) if o == r => {}
                _ => return Ty::Unknown,
            }
        }
        out.map_or(Ty::Unknown, Ty::Known)
    }

    /// The names of the methods (`property` false) or properties of a `t`.
    fn members(&self, t: TypeId, property: bool) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .native
            .iter()
            .filter(|(_, sigs)| sigs.iter().any(|s| s.first == Some(t)))
            .filter_map(|(n, _)| match n.strip_prefix("get$") {
                Some(p) if property => Some(p),
                None if !property && is_identifier(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        names.sort_unstable();
        names
    }

    fn has_property(&self, t: TypeId, name: &str) -> bool {
        let get = self.methods(&format!("get${name}"), t, 0).next().is_some();
        let set = self.methods(&format!("set${name}"), t, 1).next().is_some();
        let index =
            self.methods("index$get$", t, 1).next().is_some() || self.methods("index$set$", t, 2).next().is_some();
        get || set || index
    }

    fn arities(&self, name: &str) -> Vec<usize> {
        self.native.get(name).into_iter().flatten().map(|s| s.arity).collect()
    }
}

/// The type in a parameter's metadata (`"_: &mut Directory"` -> `Directory`).
pub(crate) fn param_type_name(info: &str) -> &str {
    let t = info.split_once(": ").map_or(info, |(_, t)| t).trim();
    t.strip_prefix("&mut ").unwrap_or(t).trim()
}

/// The `T` of a `Result<T, Box<EvalAltResult>>` return type; any other type as it is.
fn result_inner(t: &str) -> &str {
    let t = t.trim();
    let Some((head, rest)) = t.split_once('<') else { return t };
    if !(head.ends_with("Result") || head.ends_with("RhaiResultOf")) {
        return t;
    }
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth > 0 => depth -= 1,
            ',' | '>' if depth == 0 => return rest[..i].trim(),
            _ => {}
        }
    }
    t
}

/// Rhai's own value types: their methods are Rhai's, and maps can hold function pointers as
/// methods, so calls on them are never checked.
pub(crate) fn is_builtin(t: TypeId) -> bool {
    [
        TypeId::of::<Dynamic>(),
        TypeId::of::<ImmutableString>(),
        TypeId::of::<String>(),
        TypeId::of::<rhai::Map>(),
        TypeId::of::<rhai::Array>(),
        TypeId::of::<rhai::Blob>(),
        TypeId::of::<FnPtr>(),
        TypeId::of::<rhai::INT>(),
        TypeId::of::<rhai::FLOAT>(),
        TypeId::of::<bool>(),
        TypeId::of::<char>(),
        TypeId::of::<()>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i128>(),
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<u128>(),
        TypeId::of::<usize>(),
        TypeId::of::<isize>(),
        TypeId::of::<f32>(),
        TypeId::of::<std::ops::Range<rhai::INT>>(),
        TypeId::of::<std::ops::RangeInclusive<rhai::INT>>(),
        TypeId::of::<std::time::Instant>(),
    ]
    .contains(&t)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_') && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// What a script is checked against.
pub struct Known<'a> {
    /// The shared engine's functions.
    pub functions: &'a Functions,
    /// The configured names.
    pub names: &'a KnownNames,
    /// The variables a script's scope starts with, with their types where they are host types.
    pub scope: &'a [(&'a str, Option<TypeId>)],
    /// The type of `api`: its `directory`, `connection`, `notify` and `ProcessFlexHrUserOnAD`
    /// take configured names.
    pub api: TypeId,
}

/// Every mistake found in a compiled script, in the order of the text.
pub fn lint(path: &Path, ast: &AST, known: &Known) -> Vec<Diagnostic> {
    let facts = Facts::of(ast);
    let defs: Vec<&Shared<ScriptFuncDef>> = ast.iter_fn_def().collect();
    let params = infer_params(ast, &defs, known, &facts);
    let mut pass = Pass::new(known, &facts, &params, true);
    pass.main(ast);
    for def in &defs {
        pass.function(def);
    }
    let mut found = pass.found;
    found.sort_by_key(|(pos, _)| (pos.line().unwrap_or(0), pos.position().unwrap_or(0)));
    found.dedup();
    found
        .into_iter()
        .map(|(pos, message)| Diagnostic::at(path, pos.line().unwrap_or(1), pos.position().unwrap_or(1), message))
        .collect()
}

/// The type of each function parameter: the join of what every call passes, grown from "no
/// call seen" until nothing changes (so a function calling itself keeps its callers' types).
/// A worklist walks a body again only when the parameters it was walked with changed; each
/// parameter changes at most twice (to a type, then to any type), which bounds the walks.
fn infer_params(ast: &AST, defs: &[&Shared<ScriptFuncDef>], known: &Known, facts: &Facts) -> HashMap<FnKey, Vec<Ty>> {
    let body_of: HashMap<FnKey, usize> =
        defs.iter().enumerate().map(|(i, d)| ((d.name.to_string(), d.params.len()), i + 1)).collect();
    let mut params: HashMap<FnKey, Vec<Ty>> = body_of.keys().map(|k| (k.clone(), facts.settle(k, None))).collect();
    // What each body (0: the top level, i + 1: function i) passes to the functions it calls.
    let mut passed: Vec<HashMap<FnKey, Vec<Ty>>> = vec![HashMap::new(); defs.len() + 1];
    let mut callers: HashMap<FnKey, BTreeSet<usize>> = HashMap::new();
    let mut queue: VecDeque<usize> = (0..=defs.len()).collect();
    let mut queued = vec![true; defs.len() + 1];
    // Never reached by the bound above; a guard against a mistake in it all the same.
    let mut budget = 4 * (defs.len() + 1) + 4 * defs.iter().map(|d| d.params.len()).sum::<usize>();
    while let Some(body) = queue.pop_front() {
        queued[body] = false;
        if budget == 0 {
            params.values_mut().for_each(|p| p.fill(Ty::Unknown));
            break;
        }
        budget -= 1;
        let mut pass = Pass::new(known, facts, &params, false);
        match body {
            0 => pass.main(ast),
            i => pass.function(defs[i - 1]),
        }
        let calls = pass.calls;
        if calls == passed[body] {
            continue;
        }
        let changed: BTreeSet<FnKey> = calls.keys().chain(passed[body].keys()).cloned().collect();
        for key in calls.keys() {
            callers.entry(key.clone()).or_default().insert(body);
        }
        passed[body] = calls;
        for key in changed {
            let mut joined: Option<Vec<Ty>> = None;
            for b in callers.get(&key).into_iter().flatten() {
                if let Some(types) = passed[*b].get(&key) {
                    joined = Some(match joined {
                        None => types.clone(),
                        Some(j) => j.iter().zip(types).map(|(a, b)| a.join(*b)).collect(),
                    });
                }
            }
            let types = facts.settle(&key, joined.as_ref());
            if params.get(&key) != Some(&types) {
                params.insert(key.clone(), types);
                if let Some(&b) = body_of.get(&key) {
                    if !queued[b] {
                        queued[b] = true;
                        queue.push_back(b);
                    }
                }
            }
        }
    }
    params
}

/// A static type: nothing seen yet (while inferring parameters), one host type, or anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bottom,
    Known(TypeId),
    Unknown,
}

impl Ty {
    fn join(self, other: Ty) -> Ty {
        match (self, other) {
            (Ty::Bottom, t) | (t, Ty::Bottom) => t,
            (Ty::Known(a), Ty::Known(b)) if a == b => self,
            _ => Ty::Unknown,
        }
    }
}

/// A script function: its name and number of parameters (Rhai tells overloads apart by both).
type FnKey = (String, usize);

/// What holds of a script regardless of scopes, gathered once before the checks.
#[derive(Default)]
struct Facts {
    /// Script functions: name -> parameter counts.
    fns: HashMap<String, Vec<usize>>,
    /// Functions that can be called through a pointer (`Fn("f")`, `f` as a value): their
    /// callers are not all visible.
    pointed: HashSet<String>,
    /// `Fn(expr)` with a computed name: any function may be called through a pointer.
    any_pointed: bool,
    /// Functions called with `f!()`, which see their caller's variables.
    capturing: HashSet<String>,
    /// Names ever assigned (or passed as `this` to a script function, which may assign it):
    /// their type can change.
    assigned: HashSet<String>,
    /// `const`s at the script's top level, which functions reach as `global::NAME`.
    global_consts: HashSet<String>,
    /// Variables declared outside functions, for the hint when a function uses one.
    main_names: HashSet<String>,
    /// Names tested with `is_def_var("x")`: the script guards their use itself.
    tested: HashSet<String>,
    /// Custom syntax that may declare variables: undefined variables are not reported.
    scope_syntax: bool,
}

impl Facts {
    fn of(ast: &AST) -> Facts {
        let mut f = Facts::default();
        for def in ast.iter_fn_def() {
            f.fns.entry(def.name.to_string()).or_default().push(def.params.len());
        }
        for stmt in ast.statements() {
            if let Stmt::Var(x, flags, _) = stmt {
                if flags.contains(rhai::ASTFlags::CONSTANT) {
                    f.global_consts.insert(x.0.name.to_string());
                }
            }
            let mut main_names = HashSet::new();
            stmt.walk(&mut Vec::new(), &mut |path: &[ASTNode]| {
                if let Some(ASTNode::Stmt(Stmt::Var(x, ..))) = path.last() {
                    main_names.insert(x.0.name.to_string());
                }
                true
            });
            f.main_names.extend(main_names);
        }
        let mut variables = HashSet::new();
        ast.walk(&mut |path: &[ASTNode]| {
            match path.last() {
                // `x = ...` and `x += ...` can change what `x` is; `x.a = ...` cannot.
                Some(ASTNode::Stmt(Stmt::Assignment(x))) => {
                    if let Expr::Variable(v, ..) = &x.1.lhs {
                        f.assigned.insert(v.1.to_string());
                    }
                }
                // A call alone as a statement is a statement of its own kind.
                Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => f.call(call),
                Some(ASTNode::Expr(e)) => f.expr(e, &mut variables),
                _ => {}
            }
            true
        });
        // A function's name used as a value is a pointer to it.
        for name in variables {
            if f.fns.contains_key(&name) {
                f.pointed.insert(name);
            }
        }
        f
    }

    fn expr(&mut self, e: &Expr, variables: &mut HashSet<String>) {
        match e {
            Expr::DynamicConstant(d, _) => pointers_in(d, &mut self.pointed),
            Expr::Map(x, _) => x.1.values().for_each(|d| pointers_in(d, &mut self.pointed)),
            Expr::Variable(x, ..) if x.2.is_empty() => {
                variables.insert(x.1.to_string());
            }
            Expr::FnCall(call, _) => self.call(call),
            // `x.f()` with a script function `f` binds `x` as its `this`, which it may assign.
            Expr::Dot(x, ..) => {
                if let (Some(name), Expr::MethodCall(call, _)) = (root_variable(&x.lhs), first_link(&x.rhs)) {
                    if self.fns.get(call.name.as_str()).is_some_and(|a| a.contains(&call.args.len())) {
                        self.assigned.insert(name.to_string());
                    }
                }
            }
            Expr::Custom(x, _) if x.scope_may_be_changed => self.scope_syntax = true,
            _ => {}
        }
    }

    fn call(&mut self, call: &FnCallExpr) {
        match (call.name.as_str(), call.args.first()) {
            ("Fn", Some(Expr::StringConstant(s, _))) => {
                self.pointed.insert(s.to_string());
            }
            ("Fn", _) => self.any_pointed = true,
            ("is_def_var", Some(Expr::StringConstant(s, _))) => {
                self.tested.insert(s.to_string());
            }
            _ => {}
        }
        if call.capture_parent_scope {
            self.capturing.insert(call.name.to_string());
        }
    }

    /// A function's parameter types, from the join of the types its calls pass.
    fn settle(&self, (name, arity): &FnKey, seen: Option<&Vec<Ty>>) -> Vec<Ty> {
        let arity = *arity;
        if name.starts_with("anon$") {
            // A closure: its captured variables come first, curried where it is written (the
            // only call Rhai makes with them); its own parameters come from whoever calls the
            // pointer.
            let captured = seen.map_or(&[][..], |s| &s[..s.len().min(arity)]);
            (0..arity).map(|i| captured.get(i).copied().unwrap_or(Ty::Unknown)).collect()
        } else if self.any_pointed || self.pointed.contains(name) || self.capturing.contains(name) {
            vec![Ty::Unknown; arity]
        } else {
            seen.cloned().unwrap_or_else(|| vec![Ty::Bottom; arity])
        }
    }

    fn has_fn(&self, name: &str, arity: usize) -> bool {
        self.fns.get(name).is_some_and(|a| a.contains(&arity))
    }
}

/// The names of the script functions that function pointers in a constant point to.
fn pointers_in(d: &Dynamic, out: &mut HashSet<String>) {
    if let Some(f) = d.read_lock::<FnPtr>() {
        out.insert(f.fn_name().to_string());
    } else if let Some(m) = d.read_lock::<rhai::Map>() {
        m.values().for_each(|v| pointers_in(v, out));
    } else if let Some(a) = d.read_lock::<rhai::Array>() {
        a.iter().for_each(|v| pointers_in(v, out));
    }
}

/// The variable a chain or an assignment starts from (`a` of `a.b[1] = 2`).
fn root_variable(e: &Expr) -> Option<&str> {
    match e {
        Expr::Variable(x, ..) if x.2.is_empty() => Some(x.1.as_str()),
        Expr::Dot(x, ..) | Expr::Index(x, ..) => root_variable(&x.lhs),
        _ => None,
    }
}

/// The first link of a chain's right-hand side (`f()` of `x.f().g`).
fn first_link(e: &Expr) -> &Expr {
    match e {
        Expr::Dot(x, ..) | Expr::Index(x, ..) => first_link(&x.lhs),
        other => other,
    }
}

/// How a link of a chain hangs on the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Dot,
    Index,
}

/// One walk over the script with its scopes: it infers parameter types (`report` false) or
/// reports the mistakes (`report` true).
struct Pass<'a> {
    known: &'a Known<'a>,
    facts: &'a Facts,
    params: &'a HashMap<FnKey, Vec<Ty>>,
    report: bool,
    /// The argument types seen at each call of a script function, joined.
    calls: HashMap<FnKey, Vec<Ty>>,
    /// Scopes, innermost last: names with their types.
    frames: Vec<Vec<(ImmutableString, Ty)>>,
    /// The function being walked (`None` at the top level), and whether it sees its caller's
    /// variables.
    function: Option<(String, bool)>,
    found: Vec<(Position, String)>,
}

impl<'a> Pass<'a> {
    fn new(known: &'a Known<'a>, facts: &'a Facts, params: &'a HashMap<FnKey, Vec<Ty>>, report: bool) -> Self {
        Pass {
            known,
            facts,
            params,
            report,
            calls: HashMap::new(),
            frames: Vec::new(),
            function: None,
            found: Vec::new(),
        }
    }

    /// The script's top level, in the scope it starts with.
    fn main(&mut self, ast: &AST) {
        let scope = self.known.scope.iter().map(|(name, t)| {
            let ty = if self.facts.assigned.contains(*name) { Ty::Unknown } else { t.map_or(Ty::Unknown, Ty::Known) };
            (ImmutableString::from(*name), ty)
        });
        self.frames = vec![scope.collect()];
        self.function = None;
        for stmt in ast.statements() {
            self.stmt(stmt);
        }
    }

    /// A function's body, in a scope of its parameters alone.
    fn function(&mut self, def: &Shared<ScriptFuncDef>) {
        let (name, arity) = (def.name.to_string(), def.params.len());
        let types = self.params.get(&(name.clone(), arity));
        let frame = def.params.iter().enumerate().map(|(i, p)| {
            let ty = match types.map_or(Ty::Unknown, |t| t[i]) {
                _ if self.facts.assigned.contains(p.as_str()) => Ty::Unknown,
                Ty::Bottom if self.report => Ty::Unknown,
                t => t,
            };
            (p.clone(), ty)
        });
        self.frames = vec![frame.collect()];
        self.function = Some((name.clone(), self.facts.capturing.contains(&name)));
        // Rhai does not export the type of a function's body; an AST holding this function
        // alone (shared, not copied) walks it, its top-level statements first.
        let mut module = rhai::Module::new();
        module.set_script_fn(def.clone());
        let alone = AST::new_from_module(module);
        alone.walk(&mut |path: &[ASTNode]| {
            if let [ASTNode::Stmt(stmt)] = path {
                self.stmt(stmt);
            }
            true
        });
    }

    fn report(&mut self, pos: Position, message: String) {
        if self.report {
            self.found.push((pos, message));
        }
    }

    fn block(&mut self, block: &StmtBlock) {
        self.scoped(Vec::new(), block.statements());
    }

    fn scoped(&mut self, frame: Vec<(ImmutableString, Ty)>, stmts: &[Stmt]) {
        self.frames.push(frame);
        for s in stmts {
            self.stmt(s);
        }
        self.frames.pop();
    }

    fn bind(&mut self, name: &ImmutableString, ty: Ty) {
        let ty = if self.facts.assigned.contains(name.as_str()) { Ty::Unknown } else { ty };
        if let Some(frame) = self.frames.last_mut() {
            frame.push((name.clone(), ty));
        }
    }

    fn lookup(&self, name: &str) -> Option<Ty> {
        self.frames.iter().rev().flat_map(|f| f.iter().rev()).find(|(n, _)| n.as_str() == name).map(|(_, t)| *t)
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::Var(x, ..) => {
                let ty = self.expr(&x.1);
                self.bind(&x.0.name, ty);
            }
            Stmt::If(x, _) => {
                self.expr(&x.expr);
                self.block(&x.body);
                self.block(&x.branch);
            }
            Stmt::While(x, _) => {
                self.expr(&x.expr);
                self.block(&x.body);
            }
            // The condition comes after the body, outside its scope.
            Stmt::Do(x, ..) => {
                self.block(&x.body);
                self.expr(&x.expr);
            }
            Stmt::For(x, _) => {
                let (var, counter, flow) = &**x;
                self.expr(&flow.expr);
                let mut frame = vec![(var.name.clone(), Ty::Unknown)];
                frame.extend(counter.iter().map(|c| (c.name.clone(), Ty::Unknown)));
                self.scoped(frame, flow.body.statements());
            }
            Stmt::Switch(x, _) => {
                self.expr(&x.0);
                for case in &x.1.expressions {
                    self.expr(&case.lhs);
                    self.expr(&case.rhs);
                }
            }
            Stmt::TryCatch(x, _) => {
                self.block(&x.body);
                let frame = match &x.expr {
                    Expr::Variable(v, ..) => vec![(v.1.clone(), Ty::Unknown)],
                    _ => Vec::new(),
                };
                self.scoped(frame, x.branch.statements());
            }
            Stmt::Assignment(x) => {
                self.expr(&x.1.rhs);
                self.expr(&x.1.lhs);
            }
            Stmt::FnCall(call, pos) => {
                self.call(call, *pos);
            }
            Stmt::Block(b) => self.block(b),
            Stmt::Expr(e) => {
                self.expr(e);
            }
            Stmt::BreakLoop(Some(e), ..) | Stmt::Return(Some(e), ..) => {
                self.expr(e);
            }
            Stmt::Import(x, _) => {
                self.expr(&x.0);
            }
            _ => {}
        }
    }

    fn expr(&mut self, e: &Expr) -> Ty {
        match e {
            Expr::InterpolatedString(parts, _) | Expr::Array(parts, _) => {
                parts.iter().for_each(|p| {
                    self.expr(p);
                });
                Ty::Unknown
            }
            Expr::Map(x, _) => {
                x.0.iter().for_each(|(_, v)| {
                    self.expr(v);
                });
                Ty::Unknown
            }
            Expr::Variable(x, _, pos) => {
                if x.2.is_empty() {
                    self.variable(&x.1, *pos)
                } else {
                    self.namespaced(x.2.root(), &x.1, *pos);
                    Ty::Unknown
                }
            }
            Expr::Stmt(block) => {
                self.block(block);
                Ty::Unknown
            }
            Expr::FnCall(call, pos) => self.call(call, *pos),
            Expr::MethodCall(call, pos) => self.method(Ty::Unknown, None, call, *pos),
            Expr::Dot(x, ..) | Expr::Index(x, ..) => {
                let link = if matches!(e, Expr::Dot(..)) { Link::Dot } else { Link::Index };
                let root = self.expr(&x.lhs);
                let name = match &x.lhs {
                    Expr::Variable(v, ..) if v.2.is_empty() => Some(v.1.clone()),
                    _ => None,
                };
                self.chain(root, name.as_deref(), link, &x.rhs)
            }
            Expr::And(items, _) | Expr::Or(items, _) | Expr::Coalesce(items, _) => {
                items.iter().for_each(|i| {
                    self.expr(i);
                });
                Ty::Unknown
            }
            Expr::Custom(x, _) => {
                x.inputs.iter().for_each(|i| {
                    self.expr(i);
                });
                Ty::Unknown
            }
            _ => Ty::Unknown,
        }
    }

    /// The rest of a chain, hung on a `receiver` (named `name` when it is a variable).
    fn chain(&mut self, receiver: Ty, name: Option<&str>, link: Link, e: &Expr) -> Ty {
        match e {
            Expr::Dot(x, ..) | Expr::Index(x, ..) => {
                let next = if matches!(e, Expr::Dot(..)) { Link::Dot } else { Link::Index };
                let t = self.chain(receiver, name, link, &x.lhs);
                self.chain(t, None, next, &x.rhs)
            }
            _ if link == Link::Index => {
                self.expr(e);
                Ty::Unknown
            }
            Expr::Property(p, pos) => {
                self.property(receiver, name, &p.2, *pos);
                Ty::Unknown
            }
            Expr::MethodCall(call, pos) => self.method(receiver, name, call, *pos),
            other => {
                self.expr(other);
                Ty::Unknown
            }
        }
    }

    fn variable(&mut self, name: &str, pos: Position) -> Ty {
        if let Some(t) = self.lookup(name) {
            return t;
        }
        let capturing = self.function.as_ref().is_some_and(|(_, c)| *c);
        if self.facts.fns.contains_key(name) || self.facts.tested.contains(name) || self.facts.scope_syntax || capturing
        {
            return Ty::Unknown;
        }
        let message = match &self.function {
            Some((f, _)) if self.facts.global_consts.contains(name) => format!(
                "`{name}` is not visible in function `{f}`: a function sees only its parameters and its own \
                 variables; write `global::{name}` for the script's constant"
            ),
            Some((f, _))
                if self.facts.main_names.contains(name) || self.known.scope.iter().any(|(n, _)| *n == name) =>
            {
                format!(
                    "`{name}` is not visible in function `{f}`: a function sees only its parameters and its own \
                     variables; pass `{name}` as a parameter"
                )
            }
            _ => {
                let visible: Vec<&str> = self.frames.iter().flatten().map(|(n, _)| n.as_str()).collect();
                format!("variable `{name}` is not defined{}", hint(near(name, visible)))
            }
        };
        self.report(pos, message);
        Ty::Unknown
    }

    fn namespaced(&mut self, root: &str, name: &str, pos: Position) {
        if root == "global" && !self.facts.global_consts.contains(name) {
            let consts = self.facts.global_consts.iter().map(String::as_str);
            let message = format!(
                "`global::{name}` is not a constant of this script: `global::` reaches the `const`s declared \
                 at its top level{}",
                hint(near(name, consts).map(|c| format!("global::{c}")).as_deref())
            );
            self.report(pos, message);
        }
    }

    /// Records the argument types of a call of script function `name`.
    fn call_site(&mut self, name: &str, args: &[Ty]) {
        if !self.facts.has_fn(name, args.len()) {
            return;
        }
        let seen = self.calls.entry((name.to_string(), args.len())).or_insert_with(|| vec![Ty::Bottom; args.len()]);
        for (s, a) in seen.iter_mut().zip(args) {
            *s = s.join(*a);
        }
    }

    /// A function call that is not a method call.
    fn call(&mut self, call: &FnCallExpr, pos: Position) -> Ty {
        let args: Vec<Ty> = call.args.iter().map(|a| self.expr(a)).collect();
        if call.is_operator_call() || call.is_qualified() {
            return Ty::Unknown;
        }
        let name = call.name.as_str();
        // A closure with captured variables: `curry(Fn*(anon$...), captured...)`.
        if name == "curry" {
            if let Some(Expr::DynamicConstant(d, _)) = call.args.first() {
                if let Some(f) = d.read_lock::<FnPtr>().filter(|f| f.is_anonymous()) {
                    let key = (f.fn_name().to_string(), 0);
                    let arity = self.facts.fns.get(&key.0).and_then(|a| a.first().copied()).unwrap_or(0);
                    let captured = &args[1..];
                    let seen = self.calls.entry((key.0, arity)).or_insert_with(|| vec![Ty::Bottom; captured.len()]);
                    for (s, a) in seen.iter_mut().zip(captured) {
                        *s = s.join(*a);
                    }
                    return Ty::Unknown;
                }
            }
        }
        self.call_site(name, &args);
        let n = args.len();
        let fns = self.known.functions;
        if self.facts.has_fn(name, n) || KEYWORDS.contains(&name) || fns.arities(name).contains(&n) {
            return Ty::Unknown;
        }
        let mut arities: Vec<usize> = fns.arities(name);
        arities.extend(self.facts.fns.get(name).into_iter().flatten());
        let message = if self.lookup(name).is_some() {
            format!("`{name}` is a variable, not a function; call the function it holds with `{name}.call(...)`")
        } else if !arities.is_empty() {
            format!("function `{name}` takes {}, not {n}", count(&arities, "argument"))
        } else {
            let script = self.facts.fns.keys().filter(|f| !f.starts_with("anon$")).map(String::as_str);
            let native = fns.native.keys().map(String::as_str).filter(|f| is_identifier(f));
            let near = near(name, script.chain(native).collect::<BTreeSet<_>>());
            format!("no function `{name}` is defined in this script or registered{}", hint(near))
        };
        self.report(pos, message);
        Ty::Unknown
    }

    /// A method call on a `receiver` (named `name` when it is a variable).
    fn method(&mut self, receiver: Ty, name: Option<&str>, call: &FnCallExpr, pos: Position) -> Ty {
        let args: Vec<Ty> = call.args.iter().map(|a| self.expr(a)).collect();
        let method = call.name.as_str();
        self.call_site(method, &args);
        let t = match receiver {
            Ty::Known(t) if self.known.functions.is_host_type(t) => t,
            Ty::Known(_) | Ty::Unknown => return Ty::Unknown,
            Ty::Bottom => return Ty::Bottom,
        };
        if t == self.known.api {
            self.configured_names(method, &call.args);
        }
        let fns = self.known.functions;
        let n = args.len();
        if KEYWORDS.contains(&method) || self.facts.has_fn(method, n) || fns.methods(method, t, n).next().is_some() {
            return fns.method_returns(method, t, n);
        }
        let who = receiver_words(name, fns.type_name(t), t == self.known.api);
        let own: Vec<usize> = fns
            .native
            .get(method)
            .into_iter()
            .flatten()
            .filter(|s| s.first == Some(t))
            .map(|s| s.arity.saturating_sub(1))
            .collect();
        let message = if own.is_empty() {
            let members = fns.members(t, false);
            let near = near(method, members.iter().copied().chain(self.script_fns()));
            format!("{who} no method `{method}`{}", hint(near))
        } else {
            format!("{who} a method `{method}` that takes {}, not {n}", count(&own, "argument"))
        };
        self.report(pos, message);
        Ty::Unknown
    }

    fn property(&mut self, receiver: Ty, name: Option<&str>, property: &str, pos: Position) {
        let fns = self.known.functions;
        let Ty::Known(t) = receiver else { return };
        if !fns.is_host_type(t) || fns.has_property(t, property) {
            return;
        }
        let near = near(property, fns.members(t, true));
        let who = receiver_words(name, fns.type_name(t), t == self.known.api);
        self.report(pos, format!("{who} no property `{property}`{}", hint(near)));
    }

    fn script_fns(&self) -> impl Iterator<Item = &str> {
        self.facts.fns.keys().filter(|f| !f.starts_with("anon$")).map(String::as_str)
    }

    /// The names `api` methods take from `tripline.toml`, when given as string literals.
    fn configured_names(&mut self, method: &str, args: &[Expr]) {
        let names = self.known.names;
        let (index, set, what, whats, section) = match method {
            "directory" => (0, &names.directories, "directory", "directories", "directories"),
            "ProcessFlexHrUserOnAD" => (1, &names.directories, "directory", "directories", "directories"),
            "connection" => (0, &names.connections, "connection", "connections", "connections"),
            "notify" => (0, &names.notify, "notification channel", "notification channels", "notify"),
            _ => return,
        };
        let (Some(Expr::StringConstant(name, pos)), Some(set)) = (args.get(index), set) else { return };
        if set.contains(name.as_str()) {
            return;
        }
        let rest = match near(name, set.iter().map(String::as_str)) {
            Some(s) => format!("; did you mean {s:?}?"),
            None if set.is_empty() => format!("; tripline.toml has no [{section}.NAME] section"),
            None => format!(
                "; the configured {whats} are {}",
                set.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
            ),
        };
        self.report(*pos, format!("no {what} named {name:?} in tripline.toml ([{section}.{name}]){rest}"));
    }
}

/// "api has" / "`ad` is a Directory, which has" / "a Directory has".
fn receiver_words(name: Option<&str>, type_name: &str, is_api: bool) -> String {
    match name {
        Some("api") if is_api => "api has".to_string(),
        Some(n) => format!("`{n}` is {} {type_name}, which has", article(type_name)),
        None => format!("{} {type_name} has", article(type_name)),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['A', 'E', 'I', 'O', 'U', 'a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The candidate closest to `word`, whatever their cases (`ProcessFlexHrUserOnAd`).
fn near<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let lower: Vec<String> = candidates.iter().map(|c| c.to_lowercase()).collect();
    let best = did_you_mean(word, lower.iter().map(String::as_str))?;
    lower.iter().position(|l| l == best).map(|i| candidates[i])
}

fn hint(near: Option<&str>) -> String {
    near.map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
}

/// "1 argument", "1 or 2 arguments".
fn count(numbers: &[usize], what: &str) -> String {
    let mut n: Vec<usize> = numbers.to_vec();
    n.sort_unstable();
    n.dedup();
    let words: Vec<String> = n.iter().map(usize::to_string).collect();
    let list = match words.as_slice() {
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => "no".to_string(),
    };
    format!("{list} {what}{}", if n == [1] { "" } else { "s" })
}

/// The entities a script creates records of: `api.create("ENTITY", ...)` literals, and where
/// it names the entity at run time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Creates {
    pub entities: BTreeSet<String>,
    /// Positions (line, column) of `create` calls whose entity is computed.
    pub computed: Vec<(usize, usize)>,
}

/// What `ast` creates (any `create` call with two arguments counts, whatever its receiver: a
/// missed producer would make a false warning).
pub fn creates(ast: &AST) -> Creates {
    let mut out = Creates::default();
    ast.walk(&mut |path: &[ASTNode]| {
        let (entity, pos) = match path.last() {
            Some(ASTNode::Expr(Expr::MethodCall(call, pos))) if call.name == "create" && call.args.len() == 2 => {
                (&call.args[0], *pos)
            }
            Some(ASTNode::Expr(Expr::FnCall(call, pos)) | ASTNode::Stmt(Stmt::FnCall(call, pos)))
                if call.name == "create" && call.args.len() == 3 =>
            {
                (&call.args[1], *pos)
            }
            _ => return true,
        };
        match entity {
            Expr::StringConstant(s, _) => {
                out.entities.insert(s.to_string());
            }
            _ => out.computed.push((pos.line().unwrap_or(1), pos.position().unwrap_or(1))),
        }
        true
    });
    out
}

/// A rule, for [`unproduced_entities`]: its file, the file's text and its entity.
pub struct RuleEntity<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    pub source: &'a str,
    pub entity: &'a str,
}

/// A warning for each rule whose entity no webhook and no script produces. `scripts` are
/// (path, what it creates). Nothing is reported when the configuration's entities are not
/// known.
pub fn unproduced_entities<'a>(
    rules: impl IntoIterator<Item = RuleEntity<'a>>,
    scripts: &[(String, Creates)],
    names: &KnownNames,
) -> Vec<Diagnostic> {
    let Some(outside) = &names.entities else { return Vec::new() };
    let mut known: BTreeSet<&str> = outside.iter().map(String::as_str).collect();
    known.extend(scripts.iter().flat_map(|(_, c)| c.entities.iter().map(String::as_str)));
    let computed = scripts.iter().find_map(|(path, c)| c.computed.first().map(|(l, col)| format!("{path}:{l}:{col}")));
    let mut out = Vec::new();
    for rule in rules {
        if known.contains(rule.entity) {
            continue;
        }
        let near = near(rule.entity, known.iter().copied()).map(|s| format!(" (did you mean {s:?}?)"));
        let list = if known.is_empty() {
            " (nor of any other)".to_string()
        } else {
            format!(
                "; the entities produced are {}",
                known.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ")
            )
        };
        let computed = computed
            .as_ref()
            .map(|at| format!("; {at} creates records of an entity named at run time"))
            .unwrap_or_default();
        let message = format!(
            "rule {:?}: no webhook and no script (api.create) produces records of entity {:?}{}{list}{computed}; \
             only records given from outside (`tripline fire {}`) will reach this rule",
            rule.name,
            rule.entity,
            near.unwrap_or_default(),
            rule.entity
        );
        out.push(Diagnostic::span(rule.path, rule.source, entity_span(rule.source), message).warning());
    }
    out
}

/// Where a rule file's `entity = ...` value is.
fn entity_span(src: &str) -> Option<std::ops::Range<usize>> {
    #[derive(serde::Deserialize)]
    struct OnlyEntity {
        entity: toml::Spanned<String>,
    }
    toml::from_str::<OnlyEntity>(src).ok().map(|o| o.entity.span())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::LimitsConfig;
    use crate::script::ScriptEngine;

    fn names() -> KnownNames {
        let set = |names: &[&str]| Some(names.iter().map(|s| s.to_string()).collect());
        KnownNames {
            directories: set(&["ActiveDirectory", "LDAP"]),
            connections: set(&["flex_hr", "halo_itsm", "ms_graph", "nexthink", "ninjaone"]),
            notify: set(&["desk"]),
            entities: set(&["ticket"]),
        }
    }

    fn lint_with(engine: &ScriptEngine, names: &KnownNames, source: &str) -> Vec<String> {
        let path = Path::new("s.rhai");
        let ast = engine.compile(path, source).unwrap_or_else(|d| panic!("{d}"));
        engine.lint(path, &ast, names).iter().map(|d| d.to_string()).collect()
    }

    fn lint(source: &str) -> Vec<String> {
        lint_with(&ScriptEngine::new(&LimitsConfig::default(), &[]), &names(), source)
    }

    #[track_caller]
    fn clean(source: &str) {
        let found = lint(source);
        assert!(found.is_empty(), "false alarm on a working script:\n{source}\n{found:#?}");
    }

    /// The one mistake of `source`: its `line:col: message`.
    #[track_caller]
    fn one(source: &str) -> String {
        let found = lint(source);
        assert_eq!(found.len(), 1, "{source}\n{found:#?}");
        found[0].strip_prefix("s.rhai:").unwrap().to_string()
    }

    #[test]
    fn the_shipped_scripts_and_examples_are_clean() {
        // A walk of its own: the catalog's walk is a layer above the scripts' checks.
        fn rhai_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    rhai_files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rhai") {
                    out.push(path);
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seen = 0;
        for dir in ["scripts", "examples/rules-and-scripts/scripts"] {
            let mut files = Vec::new();
            rhai_files(&root.join(dir), &mut files);
            for path in files {
                clean(&std::fs::read_to_string(&path).unwrap());
                seen += 1;
            }
        }
        assert!(seen >= 9, "{seen}");
    }

    #[test]
    fn scopes_as_rhai_has_them_raise_no_false_alarms() {
        // Shadowing, blocks, and a variable declared from its own previous value.
        clean("let x = 1; { let x = x + 1; api.info(x); } let x = x * 2; api.info(x);");
        // Loops: the variable, the index, a loop's break value; do-while; while.
        clean("let t = 0; for (x, i) in [1, 2] { t += x * i; } for x in 0..3 { t += x } api.info(t);");
        clean("let n = 0; let v = loop { n += 1; if n > 3 { break n; } }; api.info(v);");
        clean("let n = 0; do { n += 1; } while n < 3; do { n -= 1 } until n == 0; while n < 2 { n += 1 }");
        // try / catch, with and without a variable; the HostError's members.
        clean(
            "try { api.retry_later(\"x\") } catch (e) { api.info(e.message); api.info(e.transient); api.info(`${e}`) }",
        );
        clean("try { throw 1 } catch { api.info(\"caught\") }");
        // switch, with a condition and a default; interpolation; `??`, `?.`, `in`.
        clean("let c = record.n; let s = switch c { 1 => \"one\", 2 if event == \"created\" => \"two\", _ => `many ${c}` }; api.info(s);");
        clean("let name = record?.Requester?.name ?? \"there\"; if \"Requester\" in record { api.info(`hi ${name}`) }");
        // Functions: parameters, their own variables, recursion, nested calls, `global::`.
        clean(
            "const LIMIT = 3;\nfn count(n) { if n <= 0 { 0 } else { 1 + count(n - 1) } }\n\
             fn twice(f, x) { f.call(f.call(x)) }\nfn over(n) { n > global::LIMIT }\n\
             let r = count(5); api.info(over(r)); api.info(twice(|v| v + 1, 1));",
        );
        // `this` in a function called as a method, also on a map; methods of maps holding
        // function pointers.
        clean("fn bump() { this.n += 1; this.n }\nlet m = #{ n: 1 }; api.info(m.bump());");
        clean("let m = #{ double: |x| x * 2, f: Fn(\"to_upper\") }; api.info(m.double(2));");
        // Closures capture what is around them, at the top level and in functions.
        clean("let k = 2; let add = |x| x + k; api.info(add.call(1)); api.info([1, 2].map(|x| x * k));");
        clean("fn f(api, items) { items.map(|i| { api.info(i); i + 1 }) }\nf(api, [1]);");
        clean("let names = []; [\"a\"].for_each(|s| names.push(s)); api.info(names);");
        // A function that sees its caller's variables: `f!()`.
        clean("fn peek() { record.id }\nlet id = peek!(); api.info(id);");
        // A function used as a value, and through Fn.
        clean("fn f(x) { x + 1 }\nlet p = f; let q = Fn(\"f\"); api.info(p.call(1) + q.call(2) + call(q, 3));");
        // A variable the script tests for itself.
        clean("if is_def_var(\"extra\") { api.info(extra) }");
        // Standard functions, as functions and as methods; type_of; keyword functions.
        clean("let s = \"a,b\"; api.info(s.split(\",\").len()); api.info(len(s)); api.info(type_of(s)); print(parse_int(\"1\")); debug(s);");
        clean("let n = 1; api.info(n.type_of()); api.info(n.to_string()); api.info(n.is_shared());");
        // The host's own methods and properties, also on handles kept in variables.
        clean(
            "let ad = api.directory(\"ActiveDirectory\"); let u = ad.find_user(\"ann\"); api.info(ad.name);\n\
             ad.reset_password(\"ann\", \"x\", true); let hr = api.connection(\"flex_hr\");\n\
             let r = hr.get(\"x\", #{}); api.info(r.status); api.info(hr.to_string());\n\
             api.notify(\"desk\", \"s\", \"b\"); api.ProcessFlexHrUserOnAD(record, \"LDAP\");",
        );
        // Scope variables, all six.
        clean("api.info([record, previous, event, rule, params].len());");
    }

    #[test]
    fn undefined_variables_are_found_at_their_place() {
        assert_eq!(one("let r = recrod.id;"), "1:9: variable `recrod` is not defined; did you mean `record`?");
        assert_eq!(one("api.info(1);\napi.comment(record, usr);"), "2:21: variable `usr` is not defined");
        // Out of their block, loop or catch.
        assert!(one("{ let inner = 1; }\napi.info(inner);").starts_with("2:10: variable `inner` is not defined"));
        assert!(one("for x in [1] { }\napi.info(x);").starts_with("2:10: variable `x` is not defined"));
        assert!(one("for (x, i) in [1] { api.info(x) }\napi.info(i);").starts_with("2:10: variable `i`"));
        assert!(one("try { api.info(1) } catch (err) { }\napi.info(err);").starts_with("2:10: variable `err`"));
        assert!(one("let n = 0; do { let last = n; n += 1; } while last < 3;").contains("`last` is not defined"));
        // Before its declaration, and assigned without one.
        assert!(one("api.info(later);\nlet later = 1;").starts_with("1:10: variable `later`"));
        assert_eq!(one("total = 1;"), "1:1: variable `total` is not defined");
        // In a closure: captured from nowhere.
        assert!(one("let f = |x| x + missing;\napi.info(f.call(1));").starts_with("1:17: variable `missing`"));
    }

    #[test]
    fn a_function_sees_only_its_parameters() {
        assert_eq!(
            one("fn close_it() {\n    api.info(\"done\");\n}\nclose_it();"),
            "2:5: `api` is not visible in function `close_it`: a function sees only its parameters and its own \
             variables; pass `api` as a parameter"
        );
        assert!(one("let who = 1;\nfn f(api) { api.info(who) }\nf(api);")
            .starts_with("2:22: `who` is not visible in function `f`"));
        assert!(one("const MAX = 3;\nfn f(n) { n > MAX }\nf(1);").contains("write `global::MAX`"));
        assert!(one("let cap = 3;\nfn f(n) { n > global::cap }\nf(1);")
            .contains("`global::cap` is not a constant of this script"));
        // Its closures too.
        assert!(one("fn f(items) { items.map(|i| i + offset) }\nf([1]);").contains("`offset` is not defined"));
    }

    #[test]
    fn unknown_methods_of_api_and_its_handles_are_found_with_the_near_name() {
        assert_eq!(one("api.coment(record, \"t\");"), "1:5: api has no method `coment`; did you mean `comment`?");
        assert_eq!(one("api.Comment(record, \"t\");"), "1:5: api has no method `Comment`; did you mean `comment`?");
        assert!(one("api.ProcessFlexHrUserOnAd(record, \"LDAP\");").ends_with("did you mean `ProcessFlexHrUserOnAD`?"));
        assert_eq!(one("api.comment(record);"), "1:5: api has a method `comment` that takes 2 arguments, not 1");
        assert_eq!(one("api.close();"), "1:5: api has a method `close` that takes 1 or 2 arguments, not 0");
        // A handle in a variable, in a chain, and through a function's parameter.
        assert_eq!(
            one("let ad = api.directory(\"ActiveDirectory\");\nad.find_usr(\"ann\");"),
            "2:4: `ad` is a Directory, which has no method `find_usr`; did you mean `find_user`?"
        );
        assert!(one("api.directory(\"LDAP\").dissable_user(\"ann\");")
            .starts_with("1:23: a Directory has no method `dissable_user`; did you mean `disable_user`?"));
        assert!(one("let hr = api.connection(\"flex_hr\");\nhr.gett(\"users\");")
            .contains("`hr` is a Connection, which has no method `gett`; did you mean `get`?"));
        assert!(one("fn sync_one(api, r) {\n  api.updat(r, #{});\n}\nsync_one(api, record);")
            .starts_with("2:7: api has no method `updat`; did you mean `update`?"));
        // Two levels of functions, and recursion keep the type.
        assert!(one("fn a(x) { b(x) }\nfn b(y) { y.inf(\"x\") }\na(api);").contains("no method `inf`"));
        assert!(
            one("fn r(api, n) { if n > 0 { r(api, n - 1) } else { api.wrn(\"x\") } }\nr(api, 2);").contains("`wrn`")
        );
        // Properties.
        assert!(one("let ad = api.directory(\"LDAP\");\napi.info(ad.nmae);")
            .contains("which has no property `nmae`; did you mean `name`?"));
        assert_eq!(one("api.info(api.dry_run);"), "1:14: api has no property `dry_run`");
        assert!(one("let ad = api.directory(\"LDAP\");\nad.nam = \"x\";")
            .starts_with("2:4: `ad` is a Directory, which has no property `nam`"));
        // A closure that captures api.
        assert!(one("let f = || api.coment(record, \"x\");\nf.call();").starts_with("1:16: api has no method `coment`"));
    }

    #[test]
    fn method_calls_on_values_of_unknown_type_are_not_judged() {
        // Mixed argument types, a function never called, one called through a pointer or
        // with f!(), a reassigned variable, a map, a catch variable: the type is not known.
        clean("fn f(x) { x.anything() }\nf(api); f(#{ anything: || 1 });");
        clean("fn never(api) { api.not_a_method() }");
        clean("fn f(api) { api.not_a_method() }\nlet p = Fn(\"f\"); p.call(#{ not_a_method: || 1 }); f(api);");
        clean("fn f(api) { api.not_a_method() }\nf!(api);");
        clean("let ad = api.directory(\"LDAP\");\nad = #{ whatever: || 1 };\nad.whatever();");
        clean("let m = record; m.whatever_field_fn();");
        clean("let api = #{ coment: || 1 }; api.coment();");
        clean("{ let api = #{ coment: || 1 }; api.coment(); }");
        clean("try { api.retry_later(\"x\") } catch (e) { e.anything() }");
        // A closure's own parameters come from whoever calls it.
        clean("let f = |a| a.anything(); f.call(#{ anything: || 1 });");
    }

    #[test]
    fn unknown_functions_are_found() {
        assert_eq!(
            one("prnt(\"x\");"),
            "1:1: no function `prnt` is defined in this script or registered; did you mean `print`?"
        );
        assert!(one("let x = parse_intt(\"1\");").contains("did you mean `parse_int`?"));
        assert!(one("fn helper(a) { a }\nhelper(1, 2);").starts_with("2:1: function `helper` takes 1 argument, not 2"));
        assert!(one("fn helper(a) { a }\nhelpr(1);").ends_with("did you mean `helper`?"));
        assert!(one("let g = |x| x + 1;\ng(2);")
            .contains("`g` is a variable, not a function; call the function it holds with `g.call(...)`"));
        assert!(one("fn f(api) { noop(api) }\nf(api);").starts_with("1:13: no function `noop`"));
        assert!(one("api.info(parse_int(\"1\", 10, 3));").contains("takes 1 or 2 arguments, not 3"));
    }

    #[test]
    fn names_that_tripline_toml_does_not_configure_are_found() {
        assert_eq!(
            one("let ad = api.directory(\"ActiveDirectry\");"),
            "1:24: no directory named \"ActiveDirectry\" in tripline.toml ([directories.ActiveDirectry]); did you mean \"ActiveDirectory\"?"
        );
        assert!(one("api.ProcessFlexHrUserOnAD(record, \"activedirectory\");")
            .contains("did you mean \"ActiveDirectory\"?"));
        assert!(one("api.connection(\"flexhr\").get(\"x\");").ends_with(
            "no connection named \"flexhr\" in tripline.toml ([connections.flexhr]); did you mean \"flex_hr\"?"
        ));
        assert!(one("api.notify(\"dsek\", \"s\", \"b\");").contains("did you mean \"desk\"?"));
        assert!(one("api.connection(\"zzz\");").contains(
            "the configured connections are \"flex_hr\", \"halo_itsm\", \"ms_graph\", \"nexthink\", \"ninjaone\""
        ));
        // A constant is as good as a literal; inside a function too.
        assert!(one("const AD = \"ActiveDirectry\";\napi.directory(AD);").starts_with("2:15: no directory named"));
        assert!(one("fn reach(api) { api.directory(\"Nope\") }\nreach(api);")
            .starts_with("1:31: no directory named \"Nope\""));
        // Names computed at run time are the host's to check.
        clean("let n = params.directory; api.directory(n);");
        // No sections at all; names not known (an example folder): not checked.
        let engine = ScriptEngine::new(&LimitsConfig::default(), &[]);
        let none = KnownNames { notify: Some(BTreeSet::new()), ..KnownNames::default() };
        let found = lint_with(&engine, &none, "api.notify(\"desk\", \"s\", \"b\"); api.directory(\"X\");");
        assert_eq!(found, ["s.rhai:1:12: no notification channel named \"desk\" in tripline.toml ([notify.desk]); tripline.toml has no [notify.NAME] section"]);
    }

    #[test]
    fn an_embedders_functions_count_as_registered() {
        #[derive(Clone)]
        struct Greeter;
        let hook: crate::script::EngineHook = std::sync::Arc::new(|engine: &mut Engine| {
            engine.register_type_with_name::<Greeter>("Greeter");
            engine.register_fn("greet", |_: &mut crate::script::Api, _who: &str| ());
            engine.register_fn("greeter", |_: &mut crate::script::Api| Greeter);
            engine.register_fn("wave", |_: &mut Greeter| ());
            engine.register_fn("shout", |s: &str| s.to_uppercase());
        });
        let engine = ScriptEngine::new(&LimitsConfig::default(), &[hook]);
        let lint = |s: &str| lint_with(&engine, &names(), s);
        assert!(lint("api.greet(\"Ann\"); api.greeter().wave(); api.info(shout(\"x\"));").is_empty());
        assert_eq!(lint("api.gret(\"Ann\");"), ["s.rhai:1:5: api has no method `gret`; did you mean `greet`?"]);
        assert_eq!(
            lint("let g = api.greeter();\ng.wav();"),
            ["s.rhai:2:3: `g` is a Greeter, which has no method `wav`; did you mean `wave`?"]
        );
    }

    #[test]
    fn every_mistake_is_reported_in_the_order_of_the_text() {
        let found = lint("api.coment(record, \"t\");\nlet x = recrod;\napi.directory(\"AD\");\nprnt(x);");
        let places: Vec<&str> = found.iter().map(|f| f.split(": ").next().unwrap()).collect();
        assert_eq!(places, ["s.rhai:1:5", "s.rhai:2:9", "s.rhai:3:15", "s.rhai:4:1"], "{found:#?}");
    }

    #[test]
    fn a_type_travels_down_a_long_chain_of_calls() {
        // 300 functions, each passing its parameter to the next: the last one gets api.
        let mut src = String::new();
        for i in 0..300 {
            src.push_str(&format!("fn f{i}(a) {{ f{}(a) }}\n", i + 1));
        }
        src.push_str("fn f300(a) { a.anything() }\nf0(api);\nfn g(api) { api.coment(1, 2) }\ng(api);\n");
        assert_eq!(
            lint(&src),
            [
                "s.rhai:301:16: `a` is an Api, which has no method `anything`",
                "s.rhai:303:17: api has no method `coment`; did you mean `comment`?"
            ]
        );
        // One caller passing something else, and the chain knows nothing.
        src.push_str("f150(#{ anything: || 1 });\n");
        assert_eq!(lint(&src), ["s.rhai:303:17: api has no method `coment`; did you mean `comment`?"]);
    }

    #[test]
    fn the_result_type_of_a_registered_function_is_read_from_its_metadata() {
        assert_eq!(result_inner("core::result::Result<a::B, alloc::boxed::Box<rhai::EvalAltResult>>"), "a::B");
        assert_eq!(result_inner("RhaiResultOf<Vec<u8>>"), "Vec<u8>");
        assert_eq!(result_inner("string"), "string");
        assert_eq!(param_type_name("_: &mut Directory"), "Directory");
        assert_eq!(param_type_name("array: &mut Array"), "Array");
    }

    #[test]
    fn a_rules_entity_that_nothing_produces_is_a_warning() {
        let engine = ScriptEngine::new(&LimitsConfig::default(), &[]);
        let ast = |s: &str| engine.compile(Path::new("job.rhai"), s).unwrap();
        let job =
            ast("fn open(api, u) { api.create(\"flexhr_log\", u) }\nopen(api, #{});\napi.create(params.kind, #{});");
        let scripts = vec![("job.rhai".to_string(), creates(&job))];
        assert_eq!(scripts[0].1.entities, BTreeSet::from(["flexhr_log".to_string()]));
        assert_eq!(scripts[0].1.computed, [(3, 5)]);
        let src = "name = \"Triage\"\nentity = \"tickets\"\nscript = \"x.rhai\"\n";
        let rule = |entity: &'static str| RuleEntity { name: "Triage", path: Path::new("r.toml"), source: src, entity };
        let warnings = unproduced_entities([rule("tickets"), rule("ticket"), rule("flexhr_log")], &scripts, &names());
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        let w = warnings[0].to_string();
        assert!(!warnings[0].is_error());
        assert!(w.starts_with("r.toml:2:10: warning: rule \"Triage\": no webhook and no script (api.create) produces records of entity \"tickets\" (did you mean \"ticket\"?); the entities produced are \"flexhr_log\", \"ticket\""), "{w}");
        assert!(w.contains("job.rhai:3:5 creates records of an entity named at run time"), "{w}");
        assert!(w.ends_with("only records given from outside (`tripline fire tickets`) will reach this rule"), "{w}");
        // Unknown configuration: nothing to compare with.
        assert!(unproduced_entities([rule("tickets")], &scripts, &KnownNames::default()).is_empty());
    }
}
