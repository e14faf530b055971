//! The character allowlists that keep policy text from becoming firewall syntax.
//!
//! nft strings have no escape sequences: a quote ends the string, `$name` expands
//! even inside quotes, `;` and newline start a new command, `#` starts a comment and
//! NUL truncates. Escaping cannot be made safe, so instead every string that reaches
//! rendered output must consist of allowed characters only. The check runs twice:
//! when the policy is validated (with a diagnostic pointing at the file) and again in
//! the template engine's formatter for every value it prints (see `backend::template`).

/// Characters allowed inside a quoted string that came from a policy (log prefix,
/// policy name, comments naming entries): letters, digits, space and a few marks
/// that mean nothing to nft or iptables-restore inside quotes.
pub fn is_quoted_safe(c: char) -> bool {
    (c as u32) < 128 && QUOTED_SAFE[c as usize]
}

/// Characters allowed anywhere in rendered output values: the quoted set plus the
/// punctuation egressc itself generates for typed values (set syntax, ranges,
/// concatenations). It still excludes everything that can end a string or start a
/// new statement, variable or comment: `"` `'` `\` `$` `;` `#` `&` `|` and all
/// control characters including newline and NUL.
pub fn is_render_safe(c: char) -> bool {
    (c as u32) < 128 && RENDER_SAFE[c as usize]
}

/// The punctuation allowed inside quotes (besides ASCII letters and digits).
/// `*` is here for wildcard entries (`host *.example.com` in comments): it
/// means nothing inside an nft or iptables-restore quoted string.
const QUOTED_MARKS: &[u8] = b" []()-_.:/,+=@*";
/// The punctuation allowed in generated bare text, in addition.
const RENDER_MARKS: &[u8] = b"{}<>!";

// Lookup tables: the check runs on every byte of every rendered value (millions
// of them for a large address list), so it is one array index, not a search.
const QUOTED_SAFE: [bool; 128] = ascii_table(QUOTED_MARKS, b"");
const RENDER_SAFE: [bool; 128] = ascii_table(QUOTED_MARKS, RENDER_MARKS);

const fn ascii_table(marks: &[u8], more: &[u8]) -> [bool; 128] {
    let mut table = [false; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < marks.len() {
        table[marks[i] as usize] = true;
        i += 1;
    }
    let mut i = 0;
    while i < more.len() {
        table[more[i] as usize] = true;
        i += 1;
    }
    table
}

/// Whether every character of `s` is quoted-safe: the same check as
/// [`is_quoted_safe`], a byte at a time (all allowed characters are ASCII, so a
/// byte of a multi-byte character fails it), for the millions of checks a large
/// render makes.
pub fn all_quoted_safe(s: &str) -> bool {
    s.bytes().all(|b| b < 128 && QUOTED_SAFE[b as usize])
}

/// [`all_quoted_safe`] for [`is_render_safe`].
pub fn all_render_safe(s: &str) -> bool {
    s.bytes().all(|b| b < 128 && RENDER_SAFE[b as usize])
}

/// The first character of `s` that is not quoted-safe, if any.
///
/// ```
/// use egressc::text::first_unsafe_quoted;
///
/// assert_eq!(first_unsafe_quoted("[EGRESS-DENIED] "), None);
/// // A quote would end an nft string; what follows would be parsed as rules.
/// assert_eq!(first_unsafe_quoted("x\"\nip daddr 0.0.0.0/0 accept"), Some((1, '"')));
/// assert_eq!(first_unsafe_quoted("$var"), Some((0, '$')));
/// ```
pub fn first_unsafe_quoted(s: &str) -> Option<(usize, char)> {
    s.chars().enumerate().find(|(_, c)| !is_quoted_safe(*c))
}

/// Describes a character for an error message without echoing control characters
/// raw into the user's terminal.
pub fn describe_char(c: char) -> String {
    match c {
        '\n' => "newline".to_string(),
        '\r' => "carriage return".to_string(),
        '\t' => "tab".to_string(),
        '\0' => "NUL".to_string(),
        c if c.is_control() => format!("control character U+{:04X}", c as u32),
        c => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_log_prefix_is_allowed() {
        assert_eq!(first_unsafe_quoted("[EGRESS-DENIED] "), None);
    }

    #[test]
    fn injection_characters_are_refused_everywhere() {
        for c in [
            '"', '\'', '\\', '$', ';', '#', '\n', '\r', '\0', '\t', '&', '|', '`',
        ] {
            assert!(!is_quoted_safe(c), "{c:?} must not be quoted-safe");
            assert!(!is_render_safe(c), "{c:?} must not be render-safe");
        }
    }

    #[test]
    fn tables_match_the_documented_sets() {
        for b in 0u8..128 {
            let c = b as char;
            let quoted = c.is_ascii_alphanumeric() || " []()-_.:/,+=@*".contains(c);
            assert_eq!(is_quoted_safe(c), quoted, "{c:?}");
            assert_eq!(is_render_safe(c), quoted || "{}<>!".contains(c), "{c:?}");
        }
    }

    #[test]
    fn the_byte_checks_agree_with_the_character_checks() {
        for s in [
            "abc",
            "a\"b",
            "é",
            "x$y",
            "[EGRESS] ",
            "*.a",
            "{}",
            "a\nb",
            "",
        ] {
            assert_eq!(all_quoted_safe(s), s.chars().all(is_quoted_safe), "{s:?}");
            assert_eq!(all_render_safe(s), s.chars().all(is_render_safe), "{s:?}");
        }
    }

    #[test]
    fn non_ascii_is_refused() {
        assert_eq!(first_unsafe_quoted("abcé"), Some((3, 'é')));
    }
}
