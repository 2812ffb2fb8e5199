//! A conservative model of the API server's static cost estimate of one CEL rule.
//!
//! Read in (the commits fetched while writing this; the model has been stable since 1.25):
//! - `github.com/google/cel-go` `checker/cost.go` (14f6746a) and `common/cost.go`: identifiers
//!   and field selections cost 1, literals 0, a list literal 10 plus its elements, a map literal
//!   30; `&&`/`||` the sum of both sides, `?:` the condition plus the dearer branch; `x in list`
//!   the list's size; `==`, `!=`, `<`... 0.1 per byte of the shorter operand (at least 1 when it
//!   can be non-empty); string `+` 0.1 per byte of the result; `matches` 0.1 per byte of the
//!   string times 0.25 per byte of the pattern; `contains` 0.1 x 0.1; `startsWith`/`endsWith`
//!   0.1 per byte of the argument; a comprehension (`all`, `exists`, `map`, `filter`) the size of
//!   its range times its loop step and condition; any other function 1 plus its arguments.
//! - `k8s.io/apiserver` `pkg/cel/common/schemas.go` (24a394e5): the size the estimate assumes for a
//!   string is its `maxLength` x 4 (bytes per code point), for an enum its longest value, else the
//!   3 MiB request (`MaxRequestSizeBytes`, `pkg/apis/cel/config.go`); for a list or map its
//!   `maxItems`/`maxProperties`, else as many of its smallest elements as fit in 3 MiB.
//!
//! Where this model departs from the server it errs high: `has()` costs 1 (the server sets
//! cel-go's `PresenceTestHasCost(false)`, `pkg/cel/environment/base.go`), a scalar compares at 1,
//! and a conversion from a string (`duration()`, `int()`...) pays for reading the string. A
//! function it does not know is an error, not a guess.

use kube::core::cel::cel::{
    Program,
    common::ast::{Expr, IdedExpr, LiteralValue},
};
use serde_json::Value;

/// `MaxRequestSizeBytes`: what the server assumes an unbounded string or list can fill.
pub const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;
/// Cost of `has()`: 0 on the server, 1 here (see the module comment).
const PRESENCE_TEST_COST: u64 = 1;

/// Why a rule cannot be estimated.
#[derive(Debug)]
pub enum EstimateError {
    /// The rule does not parse.
    Parse(String),
    /// A field the rule reads is not in the schema.
    UnknownField(String),
    /// A function whose cost this model does not know.
    UnknownFunction(String),
}

impl std::fmt::Display for EstimateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "does not parse: {e}"),
            Self::UnknownField(p) => write!(f, "reads {p}, which the schema does not declare"),
            Self::UnknownFunction(name) => write!(
                f,
                "calls {name}(), whose cost crds/tests/cel_cost/estimate.rs does not model: add it"
            ),
        }
    }
}

/// What an expression evaluates to, as far as sizes go.
#[derive(Clone, Debug)]
enum Ty<'a> {
    /// A value described by a schema node.
    Schema(&'a Value),
    /// A string literal of this many bytes.
    Str(u64),
    /// A list literal of this many elements.
    List(u64),
    /// A scalar or anything else of size at most 1.
    Scalar,
}

fn ceil_mul(x: u64, factor: f64) -> u64 {
    (x as f64 * factor).ceil() as u64
}

/// The smallest JSON a value of this schema can be written as (`DeclType.MinSerializedSize`):
/// an object is `{}` plus its required properties that have no default.
pub fn min_serialized_size(schema: &Value) -> u64 {
    match schema["type"].as_str() {
        Some("object") if schema.get("additionalProperties").is_none() => {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            2 + schema["properties"]
                .as_object()
                .map(|props| {
                    props
                        .iter()
                        .filter(|(name, p)| {
                            required.contains(&name.as_str()) && p.get("default").is_none()
                        })
                        .map(|(name, p)| name.len() as u64 + min_serialized_size(p) + 4)
                        .sum()
                })
                .unwrap_or(0)
        }
        Some("boolean") => 4,
        Some("integer" | "number") => 1,
        // "", [], {}
        _ => 2,
    }
}

/// The size the server assumes for a value of this schema: bytes of a string, elements of a
/// list or map; 1 for anything else.
pub fn max_size(schema: &Value) -> u64 {
    let unbounded = MAX_REQUEST_SIZE_BYTES - 2;
    match schema["type"].as_str() {
        Some("string") => {
            if let Some(max) = schema["maxLength"].as_u64() {
                max * 4
            } else if let Some(values) = schema["enum"].as_array() {
                values
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| s.len() as u64)
                    .max()
                    .unwrap_or(0)
            } else {
                unbounded
            }
        }
        Some("array") => schema["maxItems"]
            .as_u64()
            .unwrap_or_else(|| unbounded / (min_serialized_size(&schema["items"]) + 1)),
        Some("object") if schema.get("additionalProperties").is_some() => {
            schema["maxProperties"].as_u64().unwrap_or_else(|| {
                unbounded / (min_serialized_size(&schema["additionalProperties"]) + 6)
            })
        }
        _ => 1,
    }
}

fn size(ty: &Ty<'_>) -> u64 {
    match ty {
        Ty::Schema(s) => max_size(s),
        Ty::Str(n) | Ty::List(n) => *n,
        Ty::Scalar => 1,
    }
}

/// The type of an element of a list or map value (a map's keys are what comprehensions and `in`
/// range over, and the server does not bound them).
fn element<'a>(ty: &Ty<'a>) -> Ty<'a> {
    match ty {
        Ty::Schema(s) if s["type"] == "array" => Ty::Schema(&s["items"]),
        Ty::Schema(s) if s.get("additionalProperties").is_some() => {
            Ty::Str(MAX_REQUEST_SIZE_BYTES - 2)
        }
        _ => Ty::Scalar,
    }
}

struct Estimator<'a> {
    vars: Vec<(String, Ty<'a>)>,
}

impl<'a> Estimator<'a> {
    fn lookup(&self, name: &str) -> Ty<'a> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map_or(Ty::Scalar, |(_, t)| t.clone())
    }

    fn expr(&mut self, e: &IdedExpr) -> Result<(u64, Ty<'a>), EstimateError> {
        Ok(match &e.expr {
            Expr::Unspecified => (0, Ty::Scalar),
            Expr::Literal(LiteralValue::String(s)) => (0, Ty::Str(s.len() as u64)),
            Expr::Literal(_) => (0, Ty::Scalar),
            Expr::Ident(name) => (1, self.lookup(name)),
            Expr::Select(sel) => {
                let (cost, operand) = self.expr(&sel.operand)?;
                if sel.test {
                    (cost + PRESENCE_TEST_COST, Ty::Scalar)
                } else {
                    let field = match &operand {
                        Ty::Schema(s) => s["properties"]
                            .get(&sel.field)
                            .or_else(|| s.get("additionalProperties"))
                            .map(Ty::Schema),
                        _ => None,
                    };
                    let field =
                        field.ok_or_else(|| EstimateError::UnknownField(sel.field.clone()))?;
                    (cost + 1, field)
                }
            }
            Expr::List(list) => {
                let mut cost = 10;
                for el in &list.elements {
                    cost += self.expr(el)?.0;
                }
                (cost, Ty::List(list.elements.len() as u64))
            }
            Expr::Map(map) => (30 + self.entries(&map.entries)?, Ty::Scalar),
            Expr::Struct(st) => (40 + self.entries(&st.entries)?, Ty::Scalar),
            Expr::Call(call) => {
                let mut costs = Vec::new();
                let mut tys = Vec::new();
                for arg in call.target.iter().map(|t| &**t).chain(call.args.iter()) {
                    let (c, t) = self.expr(arg)?;
                    costs.push(c);
                    tys.push(t);
                }
                let args: u64 = costs.iter().sum();
                let size_of = |i: usize| tys.get(i).map_or(1, size);
                match call.func_name.as_str() {
                    "_&&_" | "_||_" => (args, Ty::Scalar),
                    "_?_:_" => {
                        let (t, f) = (costs[1], costs[2]);
                        let ty = if size_of(1) >= size_of(2) {
                            tys[1].clone()
                        } else {
                            tys[2].clone()
                        };
                        (costs[0] + t.max(f), ty)
                    }
                    "@in" => match &tys[1] {
                        Ty::Schema(s) if s.get("additionalProperties").is_some() => {
                            (1 + args, Ty::Scalar)
                        }
                        _ => (size_of(1) + args, Ty::Scalar),
                    },
                    "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => (
                        ceil_mul(size_of(0).min(size_of(1)), 0.1).max(1) + args,
                        Ty::Scalar,
                    ),
                    "_+_" => {
                        let total = size_of(0) + size_of(1);
                        let ty = match (&tys[0], &tys[1]) {
                            (Ty::Scalar, Ty::Scalar) => Ty::Scalar,
                            _ => Ty::Str(total),
                        };
                        (ceil_mul(total, 0.1).max(1) + args, ty)
                    }
                    "matches" => (
                        ceil_mul(size_of(0) + 1, 0.1) * ceil_mul(size_of(1), 0.25) + args,
                        Ty::Scalar,
                    ),
                    "contains" => (
                        ceil_mul(size_of(0), 0.1) * ceil_mul(size_of(1), 0.1) + args,
                        Ty::Scalar,
                    ),
                    "startsWith" | "endsWith" => (ceil_mul(size_of(1), 0.1) + args, Ty::Scalar),
                    // Conversions read their argument.
                    "duration" | "timestamp" | "int" | "uint" | "double" | "string" => {
                        (1 + ceil_mul(size_of(0), 0.1) + args, Ty::Scalar)
                    }
                    "_[_]" => (1 + args, element(&tys[0])),
                    "!_"
                    | "-_"
                    | "_-_"
                    | "_*_"
                    | "_/_"
                    | "_%_"
                    | "size"
                    | "@not_strictly_false" => (1 + args, Ty::Scalar),
                    other => return Err(EstimateError::UnknownFunction(other.to_owned())),
                }
            }
            Expr::Comprehension(c) => {
                let (range_cost, range) = self.expr(&c.iter_range)?;
                let (init_cost, init) = self.expr(&c.accu_init)?;
                self.vars.push((c.iter_var.clone(), element(&range)));
                self.vars.push((c.accu_var.clone(), init));
                let per_iteration = self.expr(&c.loop_cond)?.0 + self.expr(&c.loop_step)?.0;
                let (result_cost, result) = self.expr(&c.result)?;
                self.vars.truncate(self.vars.len() - 2);
                (
                    range_cost + init_cost + size(&range) * per_iteration + result_cost,
                    result,
                )
            }
        })
    }

    fn entries(
        &mut self,
        entries: &[kube::core::cel::cel::common::ast::IdedEntryExpr],
    ) -> Result<u64, EstimateError> {
        use kube::core::cel::cel::common::ast::EntryExpr;
        let mut cost = 0;
        for entry in entries {
            cost += match &entry.expr {
                EntryExpr::StructField(f) => self.expr(&f.value)?.0,
                EntryExpr::MapEntry(m) => self.expr(&m.key)?.0 + self.expr(&m.value)?.0,
            };
        }
        Ok(cost)
    }
}

/// The estimated cost of one evaluation of `rule` with `self` described by `schema`.
pub fn rule_cost(rule: &str, schema: &Value) -> Result<u64, EstimateError> {
    let program = Program::compile(rule).map_err(|e| EstimateError::Parse(e.to_string()))?;
    let mut estimator = Estimator {
        vars: vec![("self".to_owned(), Ty::Schema(schema))],
    };
    Ok(estimator.expr(program.expression())?.0)
}
