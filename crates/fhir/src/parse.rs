//! Parsing FHIR JSON bodies with limits on size and nesting depth.
//!
//! `serde_json` recurses once per nesting level; a body of 100,000 nested
//! arrays would exhaust the stack (or hit serde_json's own fixed limit with a
//! terse message). A linear pre-scan rejects such input first, saying where.

use std::collections::HashSet;

use serde_json::Value;
use thiserror::Error;

/// Limits applied by [`parse_json_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest accepted body, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of objects and arrays. Real resources stay
    /// well under 64 levels; serde_json refuses more than 128.
    pub max_depth: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
            max_depth: 100,
        }
    }
}

/// Why a JSON body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("the body is empty: send a JSON object")]
    Empty,
    #[error("the body is {size} bytes, more than the limit of {limit} bytes: split it up")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "JSON nesting deeper than {limit} levels at line {line}, column {column}: \
         FHIR resources do not nest this deeply"
    )]
    TooDeep {
        limit: usize,
        line: usize,
        column: usize,
    },
    #[error(
        "the key \"{key}\" appears twice in one object (line {line}, column {column}): \
         FHIR JSON allows each property once; merge or remove one"
    )]
    DuplicateKey {
        key: String,
        line: usize,
        column: usize,
    },
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
}

impl ParseError {
    /// `(line, column)` of the problem, 1-based, when it has a place.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            Self::TooDeep { line, column, .. }
            | Self::Syntax { line, column, .. }
            | Self::DuplicateKey { line, column, .. } => Some((*line, *column)),
            Self::Empty | Self::TooLarge { .. } => None,
        }
    }
}

/// Parses a JSON body with the default [`ParseLimits`].
pub fn parse_json(bytes: &[u8]) -> Result<Value, ParseError> {
    parse_json_with(bytes, ParseLimits::default())
}

/// Parses a JSON body, rejecting oversize and overly nested input before any
/// recursive work. A leading UTF-8 byte order mark is ignored.
pub fn parse_json_with(bytes: &[u8], limits: ParseLimits) -> Result<Value, ParseError> {
    if bytes.len() > limits.max_bytes {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    check_structure(bytes, limits.max_depth)?;
    serde_json::from_slice(bytes).map_err(|error| {
        let message = error.to_string();
        // serde_json appends " at line L column C"; the variant carries it.
        let message = match message.rfind(" at line ") {
            Some(cut) => message[..cut].to_owned(),
            None => message,
        };
        ParseError::Syntax {
            line: error.line(),
            column: error.column(),
            message,
        }
    })
}

/// What the scanner knows about an open `{` or `[`.
enum Frame<'a> {
    Object {
        keys: HashSet<&'a [u8]>,
        expecting_key: bool,
    },
    Array,
}

/// One linear pass before parsing: stops at the first level past
/// `max_depth` and at a repeated key in one object (serde_json would keep the
/// last silently; FHIR JSON forbids duplicates). Other malformations are
/// left for serde_json to describe.
fn check_structure(bytes: &[u8], max_depth: usize) -> Result<(), ParseError> {
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut string_start: Option<usize> = None;
    let mut escaped = false;
    let mut line = 1usize;
    let mut line_start = 0usize;
    for (offset, &byte) in bytes.iter().enumerate() {
        if let Some(start) = string_start {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    string_start = None;
                    if let Some(Frame::Object {
                        keys,
                        expecting_key: true,
                    }) = stack.last_mut()
                    {
                        let key = &bytes[start + 1..offset];
                        if !keys.insert(key) {
                            return Err(ParseError::DuplicateKey {
                                key: String::from_utf8_lossy(key).into_owned(),
                                line,
                                column: start - line_start + 1,
                            });
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => string_start = Some(offset),
            b'[' | b'{' => {
                if stack.len() >= max_depth {
                    return Err(ParseError::TooDeep {
                        limit: max_depth,
                        line,
                        column: offset - line_start + 1,
                    });
                }
                stack.push(if byte == b'{' {
                    Frame::Object {
                        keys: HashSet::new(),
                        expecting_key: true,
                    }
                } else {
                    Frame::Array
                });
            }
            b']' | b'}' => {
                stack.pop();
            }
            b':' | b',' => {
                if let Some(Frame::Object { expecting_key, .. }) = stack.last_mut() {
                    *expecting_key = byte == b',';
                }
            }
            b'\n' => {
                line += 1;
                line_start = offset + 1;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resources_keeping_decimal_text_and_key_order() {
        let value = parse_json(br#"{"resourceType":"Observation","valueQuantity":{"value":1.50}}"#)
            .unwrap();
        assert_eq!(value["valueQuantity"]["value"].to_string(), "1.50");
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["resourceType", "valueQuantity"]);
    }

    #[test]
    fn json_bomb_fails_fast_with_position() {
        let bomb = "[".repeat(100_000) + &"]".repeat(100_000);
        let started = std::time::Instant::now();
        let error = parse_json(bomb.as_bytes()).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            error,
            ParseError::TooDeep {
                limit: 100,
                line: 1,
                column: 101
            }
        );
        assert!(error.to_string().contains("deeper than 100"));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert!(parse_json(text.as_bytes()).is_ok());
    }

    #[test]
    fn depth_limit_is_exact() {
        let limits = ParseLimits {
            max_depth: 3,
            ..ParseLimits::default()
        };
        assert!(parse_json_with(b"[[[1]]]", limits).is_ok());
        assert!(matches!(
            parse_json_with(b"[[[[1]]]]", limits),
            Err(ParseError::TooDeep { column: 4, .. })
        ));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let error =
            parse_json(b"{\"resourceType\":\"Patient\",\n \"active\":true, \"active\":false}")
                .unwrap_err();
        assert_eq!(
            error,
            ParseError::DuplicateKey {
                key: "active".into(),
                line: 2,
                column: 17
            }
        );
        // The same key in sibling objects, and a value equal to a key, are fine.
        assert!(parse_json(br#"{"a":{"id":"1"},"b":{"id":"1"},"c":["a","a"],"d":"a"}"#).is_ok());
        assert!(parse_json(br#"{"a":{"x":1},"x":2}"#).is_ok());
        assert!(parse_json(br#"[{"a":1},{"a":1}]"#).is_ok());
    }

    #[test]
    fn syntax_errors_say_where() {
        let error =
            parse_json(b"{\n  \"resourceType\": \"Patient\",\n  \"active\": yes\n}").unwrap_err();
        let ParseError::Syntax { line, message, .. } = &error else {
            panic!("expected a syntax error, got {error:?}");
        };
        assert_eq!(*line, 3);
        assert!(!message.contains(" at line "));
        assert!(error.to_string().contains("line 3"));
    }

    #[test]
    fn size_and_emptiness_are_checked() {
        let limits = ParseLimits {
            max_bytes: 10,
            ..ParseLimits::default()
        };
        assert_eq!(
            parse_json_with(br#"{"resourceType":"Patient"}"#, limits),
            Err(ParseError::TooLarge {
                size: 26,
                limit: 10
            })
        );
        assert_eq!(parse_json(b"  \n"), Err(ParseError::Empty));
        assert!(matches!(
            parse_json(b"{\"a\":1} x"),
            Err(ParseError::Syntax { .. })
        ));
        assert!(parse_json(b"\xEF\xBB\xBF{}").is_ok());
        assert!(matches!(
            parse_json(b"{\"a\":\"\xFF\"}"),
            Err(ParseError::Syntax { .. })
        ));
    }
}
