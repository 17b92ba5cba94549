//! String normalisation shared by extraction and query parsing, so both sides of a string
//! comparison are folded the same way (like HAPI's `normalizeStringForSearchIndexing`, but
//! lower-case): accents removed, case folded, punctuation turned into spaces, whitespace
//! collapsed.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Folds `text` for default (`starts-with`) and `:contains` string matching.
pub fn normalize(text: &str) -> String {
    if text.is_ascii() {
        return normalize_ascii(text);
    }
    let mut out = String::with_capacity(text.len());
    // Pending separator: emitted lazily so leading/trailing/double spaces never appear.
    let mut pending_space = false;
    for ch in text.nfd() {
        if is_combining_mark(ch) {
            continue;
        }
        if ch.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            push_folded(&mut out, ch);
        } else if matches!(ch, '\'' | '’' | '`' | 'ʼ') {
            // Apostrophes join a word ("O'Brien" is searched as "obrien").
        } else {
            pending_space = true;
        }
    }
    out
}

/// The same folding for ASCII text, without Unicode decomposition (most index values).
fn normalize_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(char::from(byte.to_ascii_lowercase()));
        } else if byte != b'\'' && byte != b'`' {
            pending_space = true;
        }
    }
    out
}

/// Letters that have no canonical decomposition but are commonly typed without the mark.
fn push_folded(out: &mut String, ch: char) {
    match ch {
        'ß' => out.push_str("ss"),
        'æ' | 'Æ' => out.push_str("ae"),
        'œ' | 'Œ' => out.push_str("oe"),
        'ø' | 'Ø' => out.push('o'),
        'đ' | 'Đ' | 'ð' | 'Ð' => out.push('d'),
        'ł' | 'Ł' => out.push('l'),
        'þ' | 'Þ' => out.push_str("th"),
        'ı' => out.push('i'),
        _ => out.extend(ch.to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_accents_and_punctuation() {
        assert_eq!(normalize("Zoë  Ångström"), "zoe angstrom");
        assert_eq!(normalize("O'Brien-Smith"), "obrien smith");
        assert_eq!(normalize(" Straße "), "strasse");
        assert_eq!(normalize("Łódź"), "lodz");
        assert_eq!(normalize("..."), "");
        assert_eq!(normalize("  Peter-James O'Neil "), "peter james oneil");
        assert_eq!(normalize("Pé O'N"), "pe on");
    }
}
