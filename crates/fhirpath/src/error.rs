//! Errors of parsing and evaluating FHIRPath expressions. Positions are byte offsets into the
//! expression text.

/// The expression text is not valid FHIRPath (syntax, unknown function, wrong argument count).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unexpected character '{ch}' at position {position}")]
    UnexpectedChar { ch: char, position: usize },
    #[error("unterminated {what} starting at position {position}")]
    Unterminated { what: &'static str, position: usize },
    #[error("invalid escape sequence at position {position}")]
    BadEscape { position: usize },
    #[error("expected {expected} at position {position}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
        position: usize,
    },
    #[error("invalid {what} literal '{text}' at position {position}")]
    BadLiteral {
        what: &'static str,
        text: String,
        position: usize,
    },
    #[error("unknown function '{name}' at position {position}")]
    UnknownFunction { name: String, position: usize },
    #[error("function '{name}' at position {position} takes {expected} argument(s), got {got}")]
    Arity {
        name: String,
        expected: &'static str,
        got: usize,
        position: usize,
    },
    #[error("expression nested too deeply at position {position}")]
    TooDeep { position: usize },
    #[error("unknown type '{name}' at position {position}")]
    UnknownType { name: String, position: usize },
}

/// Evaluation failed: the expression is valid but cannot be applied to this input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{operation} at position {position} expects a single item, got {count}")]
    NotSingleton {
        operation: String,
        count: usize,
        position: usize,
    },
    #[error("{operation} at position {position} cannot be applied to {detail}")]
    TypeMismatch {
        operation: String,
        detail: String,
        position: usize,
    },
    #[error("unknown variable '%{name}' at position {position}")]
    UnknownVariable { name: String, position: usize },
    #[error("invalid regular expression at position {position}: {message}")]
    BadRegex { message: String, position: usize },
    #[error("'{name}' at position {position} is not a valid element of {parent}")]
    UnknownElement {
        name: String,
        parent: String,
        position: usize,
    },
    #[error("{operation} at position {position}: {message}")]
    Invalid {
        operation: String,
        message: String,
        position: usize,
    },
}
