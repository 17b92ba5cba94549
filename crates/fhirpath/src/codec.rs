//! `encode`/`decode` (base64, urlbase64, hex) and `escape`/`unescape` (html, json).

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn encode(text: &str, format: &str) -> Option<String> {
    let bytes = text.as_bytes();
    match format {
        "hex" => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        "base64" | "urlbase64" => {
            let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
            for chunk in bytes.chunks(3) {
                let n = (chunk[0] as u32) << 16
                    | (*chunk.get(1).unwrap_or(&0) as u32) << 8
                    | *chunk.get(2).unwrap_or(&0) as u32;
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            if format == "urlbase64" {
                out = out.replace('+', "-").replace('/', "_");
            }
            Some(out)
        }
        _ => None,
    }
}

pub(crate) fn decode(text: &str, format: &str) -> Option<String> {
    let bytes = match format {
        "hex" => {
            if !text.len().is_multiple_of(2) {
                return None;
            }
            (0..text.len())
                .step_by(2)
                .map(|i| {
                    text.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()?
        }
        "base64" | "urlbase64" => {
            let mut out = Vec::with_capacity(text.len() / 4 * 3);
            let mut buffer = 0u32;
            let mut bits = 0;
            for c in text.bytes().filter(|c| *c != b'=') {
                let c = match (format, c) {
                    ("urlbase64", b'-') => b'+',
                    ("urlbase64", b'_') => b'/',
                    _ => c,
                };
                let value = BASE64.iter().position(|b| *b == c)? as u32;
                buffer = buffer << 6 | value;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((buffer >> bits & 0xff) as u8);
                }
            }
            out
        }
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

pub(crate) fn escape(text: &str, format: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match (format, c) {
            ("html", '&') => out.push_str("&amp;"),
            ("html", '<') => out.push_str("&lt;"),
            ("html", '>') => out.push_str("&gt;"),
            ("html", '"') => out.push_str("&quot;"),
            ("html", '\'') => out.push_str("&#39;"),
            ("json", '"') => out.push_str("\\\""),
            ("json", '\\') => out.push_str("\\\\"),
            ("json", '\n') => out.push_str("\\n"),
            ("json", '\r') => out.push_str("\\r"),
            ("json", '\t') => out.push_str("\\t"),
            ("html" | "json", c) => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

pub(crate) fn unescape(text: &str, format: &str) -> Option<String> {
    match format {
        "html" => Some(
            text.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        ),
        "json" => {
            let mut out = String::with_capacity(text.len());
            let mut chars = text.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next()? {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    other => out.push(other),
                }
            }
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_padding_length() {
        for text in ["", "t", "te", "tes", "test", "subjects?_d"] {
            for format in ["base64", "urlbase64", "hex"] {
                let encoded = encode(text, format).unwrap();
                assert_eq!(
                    decode(&encoded, format).as_deref(),
                    Some(text),
                    "{format} {encoded}"
                );
            }
        }
        assert_eq!(
            encode("subjects?_d", "urlbase64").unwrap(),
            "c3ViamVjdHM_X2Q="
        );
    }
}
