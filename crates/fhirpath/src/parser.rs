//! Pratt parser from tokens to the expression tree.

use rust_decimal::Decimal;

use crate::error::ParseError;
use crate::lexer::{Tok, Token, tokenize};
use crate::temporal::Temporal;
use crate::value::Quantity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Equiv,
    NotEq,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// A type name as written: `Patient`, `FHIR.Patient`, `System.Integer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeSpec {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Literal {
    Boolean(bool),
    String(String),
    Integer(i64),
    Decimal(Decimal),
    Temporal(Temporal),
    Quantity(Quantity),
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Empty,
    Literal(Literal),
    This,
    Index,
    Total,
    Variable {
        name: String,
        pos: usize,
    },
    /// A name at the start of a path: a type filter (`Patient`) or a child of the context.
    Identifier {
        name: String,
        pos: usize,
    },
    Member {
        target: Box<Expr>,
        name: String,
        pos: usize,
    },
    Call {
        target: Option<Box<Expr>>,
        func: Func,
        args: Vec<Expr>,
        pos: usize,
    },
    Indexer {
        target: Box<Expr>,
        index: Box<Expr>,
        pos: usize,
    },
    Negate {
        operand: Box<Expr>,
        pos: usize,
    },
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
        pos: usize,
    },
    Is {
        operand: Box<Expr>,
        spec: TypeSpec,
        pos: usize,
    },
    As {
        operand: Box<Expr>,
        spec: TypeSpec,
    },
    /// The argument of `ofType`, `is()`, `as()`.
    TypeName(TypeSpec),
}

macro_rules! functions {
    ($($variant:ident = $name:literal [$min:literal, $max:literal]),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Func { $($variant),* }
        impl Func {
            fn lookup(name: &str) -> Option<(Func, usize, usize)> {
                match name { $($name => Some((Func::$variant, $min, $max)),)* _ => None }
            }
            pub(crate) fn name(self) -> &'static str {
                match self { $(Func::$variant => $name),* }
            }
        }
    };
}

functions! {
    Empty = "empty" [0, 0], Exists = "exists" [0, 1], All = "all" [1, 1],
    AllTrue = "allTrue" [0, 0], AnyTrue = "anyTrue" [0, 0], AllFalse = "allFalse" [0, 0],
    AnyFalse = "anyFalse" [0, 0], SubsetOf = "subsetOf" [1, 1], SupersetOf = "supersetOf" [1, 1],
    Count = "count" [0, 0], Distinct = "distinct" [0, 0], IsDistinct = "isDistinct" [0, 0],
    Where = "where" [1, 1], Select = "select" [1, 1], Repeat = "repeat" [1, 1],
    OfType = "ofType" [1, 1], Single = "single" [0, 0], First = "first" [0, 0], Last = "last" [0, 0],
    Tail = "tail" [0, 0], Skip = "skip" [1, 1], Take = "take" [1, 1], Intersect = "intersect" [1, 1],
    Exclude = "exclude" [1, 1], Union = "union" [1, 1], Combine = "combine" [1, 1], Iif = "iif" [2, 3],
    ToBoolean = "toBoolean" [0, 0], ConvertsToBoolean = "convertsToBoolean" [0, 0],
    ToInteger = "toInteger" [0, 0], ConvertsToInteger = "convertsToInteger" [0, 0],
    ToDate = "toDate" [0, 0], ConvertsToDate = "convertsToDate" [0, 0],
    ToDateTime = "toDateTime" [0, 0], ConvertsToDateTime = "convertsToDateTime" [0, 0],
    ToDecimal = "toDecimal" [0, 0], ConvertsToDecimal = "convertsToDecimal" [0, 0],
    ToQuantity = "toQuantity" [0, 1], ConvertsToQuantity = "convertsToQuantity" [0, 1],
    ToString = "toString" [0, 0], ConvertsToString = "convertsToString" [0, 0],
    ToTime = "toTime" [0, 0], ConvertsToTime = "convertsToTime" [0, 0],
    IndexOf = "indexOf" [1, 1], Substring = "substring" [1, 2], StartsWith = "startsWith" [1, 1],
    EndsWith = "endsWith" [1, 1], Contains = "contains" [1, 1], Upper = "upper" [0, 0],
    Lower = "lower" [0, 0], Replace = "replace" [2, 2], Matches = "matches" [1, 1],
    ReplaceMatches = "replaceMatches" [2, 2], MatchesFull = "matchesFull" [1, 1],
    Comparable = "comparable" [1, 1], Length = "length" [0, 0], ToChars = "toChars" [0, 0],
    Split = "split" [1, 1], Join = "join" [0, 1], Trim = "trim" [0, 0],
    Abs = "abs" [0, 0], Ceiling = "ceiling" [0, 0], Exp = "exp" [0, 0], Floor = "floor" [0, 0],
    Ln = "ln" [0, 0], Log = "log" [1, 1], Power = "power" [1, 1], Round = "round" [0, 1],
    Sqrt = "sqrt" [0, 0], Truncate = "truncate" [0, 0],
    Children = "children" [0, 0], Descendants = "descendants" [0, 0], Trace = "trace" [1, 2],
    Now = "now" [0, 0], TimeOfDay = "timeOfDay" [0, 0], Today = "today" [0, 0], Not = "not" [0, 0],
    Extension = "extension" [1, 1], HasValue = "hasValue" [0, 0], GetValue = "getValue" [0, 0],
    Resolve = "resolve" [0, 0], Is = "is" [1, 1], As = "as" [1, 1], Type = "type" [0, 0],
    Aggregate = "aggregate" [1, 2], MemberOf = "memberOf" [1, 1], ConformsTo = "conformsTo" [1, 1],
    HtmlChecks = "htmlChecks" [0, 0], Encode = "encode" [1, 1], Decode = "decode" [1, 1],
    Escape = "escape" [1, 1], Unescape = "unescape" [1, 1],
    LowBoundary = "lowBoundary" [0, 1], HighBoundary = "highBoundary" [0, 1],
    Precision = "precision" [0, 0], Sort = "sort" [0, 9],
}

const CALENDAR_UNITS: [&str; 16] = [
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(src)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let expr = parser.expression(0)?;
    match parser.peek() {
        Tok::End => Ok(expr),
        _ => Err(parser.unexpected("end of expression")),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

/// Nesting beyond this is refused so that hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 200;

/// Binding power of infix operators (higher binds tighter), per the FHIRPath grammar.
fn infix(tok: &Tok) -> Option<(BinOpOrType, u8)> {
    use BinOp::*;
    let op = match tok {
        Tok::Sym(s) => match *s {
            "*" => (BinOpOrType::Op(Mul), 10),
            "/" => (BinOpOrType::Op(Div), 10),
            "+" => (BinOpOrType::Op(Add), 9),
            "-" => (BinOpOrType::Op(Sub), 9),
            "&" => (BinOpOrType::Op(Concat), 9),
            "|" => (BinOpOrType::Op(Union), 7),
            "<" => (BinOpOrType::Op(Lt), 6),
            ">" => (BinOpOrType::Op(Gt), 6),
            "<=" => (BinOpOrType::Op(Le), 6),
            ">=" => (BinOpOrType::Op(Ge), 6),
            "=" => (BinOpOrType::Op(Eq), 5),
            "~" => (BinOpOrType::Op(Equiv), 5),
            "!=" => (BinOpOrType::Op(NotEq), 5),
            "!~" => (BinOpOrType::Op(NotEquiv), 5),
            _ => return None,
        },
        Tok::Ident {
            name,
            quoted: false,
        } => match name.as_str() {
            "div" => (BinOpOrType::Op(IntDiv), 10),
            "mod" => (BinOpOrType::Op(Mod), 10),
            "is" => (BinOpOrType::Is, 8),
            "as" => (BinOpOrType::As, 8),
            "in" => (BinOpOrType::Op(In), 4),
            "contains" => (BinOpOrType::Op(Contains), 4),
            "and" => (BinOpOrType::Op(And), 3),
            "or" => (BinOpOrType::Op(Or), 2),
            "xor" => (BinOpOrType::Op(Xor), 2),
            "implies" => (BinOpOrType::Op(Implies), 1),
            _ => return None,
        },
        _ => return None,
    };
    Some(op)
}

enum BinOpOrType {
    Op(BinOp),
    Is,
    As,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at.min(self.tokens.len() - 1)].tok
    }
    fn pos(&self) -> usize {
        self.tokens[self.at.min(self.tokens.len() - 1)].pos
    }
    fn bump(&mut self) -> Token {
        let t = self.tokens[self.at.min(self.tokens.len() - 1)].clone();
        self.at += 1;
        t
    }
    fn unexpected(&self, expected: &'static str) -> ParseError {
        ParseError::Expected {
            expected,
            found: describe(self.peek()),
            position: self.pos(),
        }
    }
    fn expect_sym(&mut self, sym: &'static str) -> Result<(), ParseError> {
        if self.peek() == &Tok::Sym(sym) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.unexpected(sym))
        }
    }

    fn expression(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::TooDeep {
                position: self.pos(),
            });
        }
        let result = self.expression_inner(min_bp);
        self.depth -= 1;
        result
    }

    fn expression_inner(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while let Some((op, bp)) = infix(self.peek()) {
            if bp < min_bp {
                break;
            }
            let pos = self.pos();
            self.at += 1;
            left = match op {
                BinOpOrType::Is => Expr::Is {
                    operand: Box::new(left),
                    spec: self.type_spec()?,
                    pos,
                },
                BinOpOrType::As => Expr::As {
                    operand: Box::new(left),
                    spec: self.type_spec()?,
                },
                BinOpOrType::Op(op) => {
                    let right = self.expression(bp + 1)?;
                    Expr::Binary {
                        op,
                        left: Box::new(left),
                        right: Box::new(right),
                        pos,
                    }
                }
            };
        }
        Ok(left)
    }

    fn type_spec(&mut self) -> Result<TypeSpec, ParseError> {
        let pos = self.pos();
        let spec = self.type_spec_unchecked()?;
        check_type(spec, pos)
    }

    fn type_spec_unchecked(&mut self) -> Result<TypeSpec, ParseError> {
        let first = self.identifier("type name")?;
        let next_is_name = matches!(
            self.tokens.get(self.at + 1).map(|t| &t.tok),
            Some(Tok::Ident { .. })
        );
        if self.peek() == &Tok::Sym(".") && next_is_name {
            self.at += 1;
            let name = self.identifier("type name")?;
            return Ok(TypeSpec {
                namespace: Some(first),
                name,
            });
        }
        Ok(TypeSpec {
            namespace: None,
            name: first,
        })
    }

    fn identifier(&mut self, expected: &'static str) -> Result<String, ParseError> {
        match self.peek().clone() {
            Tok::Ident { name, .. } => {
                self.at += 1;
                Ok(name)
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let pos = self.pos();
        match self.peek() {
            Tok::Sym("-") => {
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(ParseError::TooDeep { position: pos });
                }
                let operand = self.unary();
                self.depth -= 1;
                let operand = operand?;
                Ok(match operand {
                    Expr::Literal(Literal::Integer(i)) => Expr::Literal(Literal::Integer(-i)),
                    Expr::Literal(Literal::Decimal(d)) => Expr::Literal(Literal::Decimal(-d)),
                    other => Expr::Negate {
                        operand: Box::new(other),
                        pos,
                    },
                })
            }
            Tok::Sym("+") => {
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(ParseError::TooDeep { position: pos });
                }
                let operand = self.unary();
                self.depth -= 1;
                operand
            }
            _ => {
                let term = self.term()?;
                self.postfix(term)
            }
        }
    }

    fn postfix(&mut self, mut expr: Expr) -> Result<Expr, ParseError> {
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.at += 1;
                    let pos = self.pos();
                    let name = self.identifier("a name after '.'")?;
                    if self.peek() == &Tok::Sym("(") {
                        expr = self.call(Some(expr), name, pos)?;
                    } else {
                        expr = Expr::Member {
                            target: Box::new(expr),
                            name,
                            pos,
                        };
                    }
                }
                Tok::Sym("[") => {
                    let pos = self.pos();
                    self.at += 1;
                    let index = self.expression(0)?;
                    self.expect_sym("]")?;
                    expr = Expr::Indexer {
                        target: Box::new(expr),
                        index: Box::new(index),
                        pos,
                    };
                }
                _ => return Ok(expr),
            }
        }
    }

    fn call(&mut self, target: Option<Expr>, name: String, pos: usize) -> Result<Expr, ParseError> {
        self.expect_sym("(")?;
        let mut args = Vec::new();
        if self.peek() != &Tok::Sym(")") {
            loop {
                args.push(self.expression(0)?);
                if self.peek() == &Tok::Sym(",") {
                    self.at += 1;
                } else {
                    break;
                }
            }
        }
        self.expect_sym(")")?;
        let Some((func, min, max)) = Func::lookup(&name) else {
            return Err(ParseError::UnknownFunction {
                name,
                position: pos,
            });
        };
        if args.len() < min || args.len() > max {
            let expected = match (min, max) {
                (0, 0) => "no",
                (1, 1) => "1",
                (2, 2) => "2",
                (0, 1) => "0 or 1",
                (1, 2) => "1 or 2",
                (2, 3) => "2 or 3",
                _ => "a different number of",
            };
            return Err(ParseError::Arity {
                name,
                expected,
                got: args.len(),
                position: pos,
            });
        }
        if matches!(func, Func::OfType | Func::Is | Func::As) {
            let spec = type_spec_of(&args[0]).ok_or_else(|| ParseError::Expected {
                expected: "a type name",
                found: "an expression".into(),
                position: pos,
            })?;
            args[0] = Expr::TypeName(check_type(spec, pos)?);
        }
        Ok(Expr::Call {
            target: target.map(Box::new),
            func,
            args,
            pos,
        })
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let Token { tok, pos } = self.bump();
        match tok {
            Tok::Sym("(") => {
                let inner = self.expression(0)?;
                self.expect_sym(")")?;
                Ok(inner)
            }
            Tok::Sym("{") => {
                self.expect_sym("}")?;
                Ok(Expr::Empty)
            }
            Tok::Str(s) => Ok(Expr::Literal(Literal::String(s))),
            Tok::Number(text) => self.number(text, pos),
            Tok::DateTime(text) => {
                let parsed = Temporal::parse_literal(&text).ok_or(ParseError::BadLiteral {
                    what: "date/time",
                    text,
                    position: pos,
                })?;
                Ok(Expr::Literal(Literal::Temporal(parsed)))
            }
            Tok::Env(name) => Ok(Expr::Variable { name, pos }),
            Tok::Special(name) => match name.as_str() {
                "this" => Ok(Expr::This),
                "index" => Ok(Expr::Index),
                "total" => Ok(Expr::Total),
                _ => Err(ParseError::UnexpectedChar {
                    ch: '$',
                    position: pos,
                }),
            },
            Tok::Ident { name, quoted } => {
                if !quoted && (name == "true" || name == "false") {
                    return Ok(Expr::Literal(Literal::Boolean(name == "true")));
                }
                if self.peek() == &Tok::Sym("(") && !quoted {
                    return self.call(None, name, pos);
                }
                Ok(Expr::Identifier { name, pos })
            }
            other => {
                self.at -= 1;
                let _ = other;
                Err(self.unexpected("an expression"))
            }
        }
    }

    fn number(&mut self, text: String, pos: usize) -> Result<Expr, ParseError> {
        let bad = || ParseError::BadLiteral {
            what: "number",
            text: text.clone(),
            position: pos,
        };
        let value: Decimal = text.parse().map_err(|_| bad())?;
        // A number followed by a unit is a quantity literal.
        match self.peek().clone() {
            Tok::Str(unit) => {
                self.at += 1;
                return Ok(Expr::Literal(Literal::Quantity(Quantity::new(value, unit))));
            }
            Tok::Ident {
                name,
                quoted: false,
            } if CALENDAR_UNITS.contains(&name.as_str()) => {
                self.at += 1;
                return Ok(Expr::Literal(Literal::Quantity(Quantity::new(value, name))));
            }
            _ => {}
        }
        if text.contains('.') {
            Ok(Expr::Literal(Literal::Decimal(value)))
        } else {
            Ok(Expr::Literal(Literal::Integer(
                text.parse().map_err(|_| bad())?,
            )))
        }
    }
}

fn type_spec_of(expr: &Expr) -> Option<TypeSpec> {
    match expr {
        Expr::Identifier { name, .. } => Some(TypeSpec {
            namespace: None,
            name: name.clone(),
        }),
        Expr::Member { target, name, .. } => match target.as_ref() {
            Expr::Identifier { name: ns, .. } => Some(TypeSpec {
                namespace: Some(ns.clone()),
                name: name.clone(),
            }),
            _ => None,
        },
        _ => None,
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident { name, .. } => format!("'{name}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Number(n) => format!("number {n}"),
        Tok::DateTime(d) => format!("@{d}"),
        Tok::Env(e) => format!("%{e}"),
        Tok::Special(s) => format!("${s}"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::End => "end of expression".into(),
    }
}

const SYSTEM_TYPES: [&str; 9] = [
    "Any", "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity",
];

/// Rejects type names that are neither System nor FHIR types (`as(string1)`).
fn check_type(spec: TypeSpec, pos: usize) -> Result<TypeSpec, ParseError> {
    let system_type = SYSTEM_TYPES.contains(&spec.name.as_str());
    let fhir = crate::model::model().is_type(&spec.name);
    let known = match spec.namespace.as_deref() {
        // Unknown System names are simply never matched (`is(System.Patient)`).
        Some("System") => true,
        Some("FHIR") => fhir,
        Some(_) => false,
        None => system_type || fhir,
    };
    if known {
        Ok(spec)
    } else {
        Err(ParseError::UnknownType {
            name: spec.name,
            position: pos,
        })
    }
}
