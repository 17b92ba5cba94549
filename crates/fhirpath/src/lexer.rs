//! Tokenizer for FHIRPath expressions.

use crate::error::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier or keyword; `quoted` for backtick-delimited names, which are never keywords.
    Ident {
        name: String,
        quoted: bool,
    },
    Str(String),
    /// The literal text of a number (kept as text so decimals keep their precision).
    Number(String),
    /// A `@...` literal without the `@`.
    DateTime(String),
    /// `%name`, `%'name'` or `%`name``.
    Env(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    Sym(&'static str),
    End,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

const SYMBOLS: [&str; 22] = [
    "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", ",", "+", "-", "*", "/", "&", "|", "=", "~",
    "<", ">", "{", "}",
];

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if src[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if src[i..].starts_with("/*") {
            match src[i + 2..].find("*/") {
                Some(end) => {
                    i += 2 + end + 2;
                    continue;
                }
                None => {
                    return Err(ParseError::Unterminated {
                        what: "comment",
                        position: i,
                    });
                }
            }
        }
        let start = i;
        let tok = match c {
            b'\'' => {
                let (text, next) = read_quoted(src, i, b'\'')?;
                i = next;
                Tok::Str(text)
            }
            b'`' => {
                let (text, next) = read_quoted(src, i, b'`')?;
                i = next;
                Tok::Ident {
                    name: text,
                    quoted: true,
                }
            }
            b'%' => {
                i += 1;
                match bytes.get(i) {
                    Some(b'\'') | Some(b'`') => {
                        let (text, next) = read_quoted(src, i, bytes[i])?;
                        i = next;
                        Tok::Env(text)
                    }
                    _ => {
                        let end = ident_end(bytes, i);
                        if end == i {
                            return Err(ParseError::UnexpectedChar {
                                ch: '%',
                                position: start,
                            });
                        }
                        let name = src[i..end].to_string();
                        i = end;
                        Tok::Env(name)
                    }
                }
            }
            b'$' => {
                let end = ident_end(bytes, i + 1);
                let name = src[i + 1..end].to_string();
                i = end;
                Tok::Special(name)
            }
            b'@' => {
                i += 1;
                let end = datetime_end(bytes, i);
                if end == i {
                    return Err(ParseError::UnexpectedChar {
                        ch: '@',
                        position: start,
                    });
                }
                let text = src[i..end].to_string();
                i = end;
                Tok::DateTime(text)
            }
            b'0'..=b'9' => {
                let mut end = i;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                // A `.` followed by a digit continues the number; `1.abs()` is a call.
                if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
                    end += 1;
                    while end < bytes.len() && bytes[end].is_ascii_digit() {
                        end += 1;
                    }
                }
                let text = src[i..end].to_string();
                i = end;
                // Long integer suffix (`10L`) is read as an ordinary integer.
                if i < bytes.len() && bytes[i] == b'L' && !text.contains('.') {
                    i += 1;
                }
                Tok::Number(text)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = ident_end(bytes, i);
                let name = src[i..end].to_string();
                i = end;
                Tok::Ident {
                    name,
                    quoted: false,
                }
            }
            _ => {
                let Some(sym) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) else {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(ParseError::UnexpectedChar { ch, position: i });
                };
                i += sym.len();
                Tok::Sym(sym)
            }
        };
        out.push(Token { tok, pos: start });
    }
    out.push(Token {
        tok: Tok::End,
        pos: src.len(),
    });
    Ok(out)
}

fn ident_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    i
}

/// The end of a date/time literal: digits, `-`, `:`, `T`, `.`, `+`, `Z`; a trailing `.` that is
/// not followed by a digit is a member access, not part of the literal.
fn datetime_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        let b = bytes[i];
        let accepted = b.is_ascii_digit()
            || matches!(b, b'-' | b':' | b'T' | b'+' | b'Z')
            || (b == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !accepted {
            break;
        }
        i += 1;
    }
    i
}

fn read_quoted(src: &str, start: usize, quote: u8) -> Result<(String, usize), ParseError> {
    let bytes = src.as_bytes();
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&b) = bytes.get(i) else {
            return Err(ParseError::Unterminated {
                what: "string",
                position: start,
            });
        };
        if b == quote {
            return Ok((out, i + 1));
        }
        if b == b'\\' {
            let Some(&esc) = bytes.get(i + 1) else {
                return Err(ParseError::Unterminated {
                    what: "string",
                    position: start,
                });
            };
            i += 2;
            match esc {
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'f' => out.push('\u{c}'),
                b'u' => {
                    let hex = src
                        .get(i..i + 4)
                        .ok_or(ParseError::BadEscape { position: i - 2 })?;
                    let code = u32::from_str_radix(hex, 16)
                        .map_err(|_| ParseError::BadEscape { position: i - 2 })?;
                    out.push(
                        char::from_u32(code).ok_or(ParseError::BadEscape { position: i - 2 })?,
                    );
                    i += 4;
                }
                b'\\' | b'/' | b'\'' | b'"' | b'`' => out.push(esc as char),
                _ => return Err(ParseError::BadEscape { position: i - 2 }),
            }
            continue;
        }
        // Copy one whole UTF-8 character.
        let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
}
