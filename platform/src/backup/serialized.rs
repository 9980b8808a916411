//! A domain rewritten inside a database value, PHP-serialized values included, as WP-CLI's
//! `search-replace` does: a serialized value is parsed, its strings rewritten (recursively:
//! a string may itself hold a serialized value), and it is written again with each `s:N:`
//! length counted anew in bytes. A value that does not parse as a whole is rewritten as
//! plain text.
//!
//! Array keys and property names are kept as they are (WP-CLI rewrites values only), and
//! `C:` (a class's own serialization format) is copied untouched: its content is opaque.

/// Rewrites `from` into `to` in values.
#[derive(Debug, Clone)]
pub struct Rewriter {
    from: Vec<u8>,
    to: Vec<u8>,
}

/// Nesting accepted inside a serialized value (arrays, objects, serialized strings);
/// deeper is rewritten as plain text rather than risking the stack on a crafted value.
const MAX_DEPTH: usize = 64;

impl Rewriter {
    /// `from` must not be empty.
    pub fn new(from: &str, to: &str) -> Option<Self> {
        (!from.is_empty()).then(|| Self {
            from: from.as_bytes().to_vec(),
            to: to.as_bytes().to_vec(),
        })
    }

    /// What is searched for.
    pub fn from(&self) -> &[u8] {
        &self.from
    }

    /// The value rewritten, or `None` when it does not contain `from` (most values).
    pub fn rewrite(&self, value: &[u8]) -> Option<Vec<u8>> {
        find(value, &self.from)?;
        Some(self.value(value, 0))
    }

    /// A whole value: serialized if it parses as such, plain text otherwise.
    fn value(&self, value: &[u8], depth: usize) -> Vec<u8> {
        if depth < MAX_DEPTH && looks_serialized(value) {
            let mut out = Vec::with_capacity(value.len() + 64);
            let mut pos = 0;
            if self.item(value, &mut pos, &mut out, true, depth).is_some() && pos == value.len() {
                return out;
            }
        }
        self.plain(value)
    }

    fn plain(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + 16);
        let mut rest = value;
        while let Some(at) = find(rest, &self.from) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(&self.to);
            rest = &rest[at + self.from.len()..];
        }
        out.extend_from_slice(rest);
        out
    }

    /// One serialized item at `pos`, written to `out` (strings rewritten if `rewrite`).
    fn item(
        &self,
        input: &[u8],
        pos: &mut usize,
        out: &mut Vec<u8>,
        rewrite: bool,
        depth: usize,
    ) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let tag = *input.get(*pos)?;
        match tag {
            b'N' => {
                expect(input, pos, b"N;")?;
                out.extend_from_slice(b"N;");
            }
            b'b' | b'i' | b'd' | b'r' | b'R' => {
                let start = *pos;
                *pos += 1;
                expect(input, pos, b":")?;
                let end = find(&input[*pos..], b";")? + *pos;
                let body = &input[*pos..end];
                let valid = !body.is_empty()
                    && body.iter().all(|c| {
                        c.is_ascii_digit()
                            || matches!(c, b'-' | b'+' | b'.' | b'E' | b'e')
                            || (tag == b'd' && matches!(c, b'I' | b'N' | b'F' | b'A'))
                    });
                if !valid {
                    return None;
                }
                *pos = end + 1;
                out.extend_from_slice(&input[start..*pos]);
            }
            b's' => {
                *pos += 1;
                expect(input, pos, b":")?;
                let len = number(input, pos)?;
                expect(input, pos, b":\"")?;
                let body = input.get(*pos..pos.checked_add(len)?)?;
                *pos += len;
                expect(input, pos, b"\";")?;
                let body = if rewrite && find(body, &self.from).is_some() {
                    std::borrow::Cow::Owned(self.value(body, depth + 1))
                } else {
                    std::borrow::Cow::Borrowed(body)
                };
                out.extend_from_slice(format!("s:{}:\"", body.len()).as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\";");
            }
            b'E' => {
                // An enum case, `E:N:"Class:Case";`: a name, not text.
                let start = *pos;
                *pos += 1;
                expect(input, pos, b":")?;
                let len = number(input, pos)?;
                expect(input, pos, b":\"")?;
                *pos = pos.checked_add(len)?;
                expect(input, pos, b"\";")?;
                out.extend_from_slice(&input[start..*pos]);
            }
            b'a' => {
                *pos += 1;
                expect(input, pos, b":")?;
                let count = number(input, pos)?;
                expect(input, pos, b":{")?;
                out.extend_from_slice(format!("a:{count}:{{").as_bytes());
                self.members(input, pos, out, rewrite, depth, count)?;
            }
            b'O' => {
                let start = *pos;
                *pos += 1;
                expect(input, pos, b":")?;
                let len = number(input, pos)?;
                expect(input, pos, b":\"")?;
                *pos = pos.checked_add(len)?;
                expect(input, pos, b"\":")?;
                let count = number(input, pos)?;
                expect(input, pos, b":{")?;
                out.extend_from_slice(&input[start..*pos]);
                self.members(input, pos, out, rewrite, depth, count)?;
            }
            b'C' => {
                // `C:N:"Class":M:{M bytes}`: the class's own format, copied as it is.
                let start = *pos;
                *pos += 1;
                expect(input, pos, b":")?;
                let len = number(input, pos)?;
                expect(input, pos, b":\"")?;
                *pos = pos.checked_add(len)?;
                expect(input, pos, b"\":")?;
                let size = number(input, pos)?;
                expect(input, pos, b":{")?;
                *pos = pos.checked_add(size)?;
                expect(input, pos, b"}")?;
                out.extend_from_slice(&input[start..*pos]);
            }
            _ => return None,
        }
        Some(())
    }

    /// `count` key/value pairs and the closing `}`; keys are copied, values rewritten.
    fn members(
        &self,
        input: &[u8],
        pos: &mut usize,
        out: &mut Vec<u8>,
        rewrite: bool,
        depth: usize,
        count: usize,
    ) -> Option<()> {
        for _ in 0..count {
            if !matches!(input.get(*pos), Some(b'i' | b's')) {
                return None;
            }
            self.item(input, pos, out, false, depth + 1)?;
            self.item(input, pos, out, rewrite, depth + 1)?;
        }
        expect(input, pos, b"}")?;
        out.push(b'}');
        Some(())
    }
}

/// What WordPress's `is_serialized` would look at first: a tag and a colon (or `N;`),
/// and a `;` or `}` at the end.
fn looks_serialized(value: &[u8]) -> bool {
    matches!(value, [b'N', b';'])
        || (value.len() >= 4
            && matches!(
                value[0],
                b'a' | b'O' | b's' | b'i' | b'd' | b'b' | b'C' | b'E'
            )
            && value[1] == b':'
            && matches!(value.last(), Some(b';' | b'}')))
}

fn expect(input: &[u8], pos: &mut usize, token: &[u8]) -> Option<()> {
    if input.get(*pos..pos.checked_add(token.len())?)? == token {
        *pos += token.len();
        Some(())
    } else {
        None
    }
}

/// A decimal count (at most 12 digits).
fn number(input: &[u8], pos: &mut usize) -> Option<usize> {
    let start = *pos;
    while input.get(*pos).is_some_and(u8::is_ascii_digit) && *pos - start < 12 {
        *pos += 1;
    }
    if *pos == start {
        return None;
    }
    std::str::from_utf8(&input[start..*pos]).ok()?.parse().ok()
}

/// The first position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(from: &str, to: &str, value: &str) -> String {
        let r = Rewriter::new(from, to).unwrap_or_else(|| panic!("empty"));
        String::from_utf8(
            r.rewrite(value.as_bytes())
                .unwrap_or_else(|| value.as_bytes().to_vec()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn plain_text_is_replaced_everywhere_and_untouched_values_are_not_copied() {
        assert_eq!(
            rw(
                "a.example",
                "new.example.org",
                "https://a.example/x and http://a.example"
            ),
            "https://new.example.org/x and http://new.example.org"
        );
        let r = Rewriter::new("a.example", "b.example").unwrap_or_else(|| panic!());
        assert_eq!(r.rewrite(b"nothing to see"), None);
    }

    #[test]
    fn string_lengths_are_counted_again() {
        assert_eq!(
            rw(
                "a.example",
                "shop.b.example",
                r#"s:17:"https://a.example";"#
            ),
            r#"s:22:"https://shop.b.example";"#
        );
    }

    #[test]
    fn nested_arrays_objects_and_serialized_strings_are_fixed_at_every_level() {
        let value = r#"a:3:{s:3:"url";s:17:"https://a.example";s:4:"list";a:2:{i:0;s:9:"a.example";i:1;O:8:"stdClass":1:{s:4:"home";s:18:"http://a.example/x";}}s:5:"inner";s:35:"a:1:{i:0;s:17:"https://a.example";}";}"#;
        let out = rw("a.example", "bb.example", value);
        assert_eq!(
            out,
            r#"a:3:{s:3:"url";s:18:"https://bb.example";s:4:"list";a:2:{i:0;s:10:"bb.example";i:1;O:8:"stdClass":1:{s:4:"home";s:19:"http://bb.example/x";}}s:5:"inner";s:36:"a:1:{i:0;s:18:"https://bb.example";}";}"#
        );
    }

    #[test]
    fn multibyte_text_counts_bytes_not_characters() {
        // "café à a.example": 18 bytes of UTF-8 for 16 characters.
        let value = "s:18:\"café à a.example\";";
        assert_eq!(value.len() - 8, 18);
        let out = rw("a.example", "ドメイン.example", value);
        let text = "café à ドメイン.example";
        assert_eq!(out, format!("s:{}:\"{text}\";", text.len()));
        // And a domain in a string next to emoji.
        let out = rw("a.example", "b.example", "a:1:{i:0;s:14:\"🚀a.example!\";}");
        assert_eq!(out, "a:1:{i:0;s:14:\"🚀b.example!\";}");
    }

    #[test]
    fn quotes_and_semicolons_inside_strings_do_not_confuse_the_lengths() {
        let inner = r#"say "hi"; to a.example's }{ users"#;
        let value = format!("a:1:{{s:1:\"k\";s:{}:\"{inner}\";}}", inner.len());
        let out = rw("a.example", "b.example.net", &value);
        let new_inner = inner.replace("a.example", "b.example.net");
        assert_eq!(
            out,
            format!("a:1:{{s:1:\"k\";s:{}:\"{new_inner}\";}}", new_inner.len())
        );
    }

    #[test]
    fn keys_enums_and_custom_formats_are_kept() {
        let value = r#"a:2:{s:9:"a.example";E:11:"Suit:Hearts";i:1;C:3:"Foo":9:{a.example}}"#;
        assert_eq!(rw("a.example", "b.example.org", value), value);
    }

    #[test]
    fn a_broken_serialized_value_is_replaced_as_text() {
        // Length 99 is wrong: not serialized as far as a parser can tell.
        assert_eq!(
            rw("a.example", "b.example", r#"s:99:"https://a.example";"#),
            r#"s:99:"https://b.example";"#
        );
        // Numbers, booleans and null pass through.
        assert_eq!(
            rw(
                "a.example",
                "xy.example",
                r#"a:4:{i:0;b:1;i:1;N;i:2;d:0.5;i:3;s:9:"a.example";}"#
            ),
            r#"a:4:{i:0;b:1;i:1;N;i:2;d:0.5;i:3;s:10:"xy.example";}"#
        );
    }

    #[test]
    fn deep_nesting_is_refused_as_serialized_and_kept_whole() {
        let mut value = String::new();
        for _ in 0..200 {
            value.push_str("a:1:{i:0;");
        }
        value.push_str("s:9:\"a.example\";");
        for _ in 0..200 {
            value.push('}');
        }
        let out = rw("a.example", "b.example", &value);
        assert_eq!(out, value.replace("a.example", "b.example"));
    }
}
