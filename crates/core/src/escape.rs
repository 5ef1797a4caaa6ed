//! The one way a value from outside (the chain, a hub, a model file) is
//! made safe before it reaches a log line or a terminal: a commitment may
//! hold a newline (a forged log line), ESC or an OSC sequence (retitling or
//! repainting the operator's terminal), BEL, or Unicode's bidirectional
//! overrides (text that reads differently from what it is). Every such
//! character is written as an escape (`\n`, `\x1b`, `\u{202e}`) and a
//! backslash as `\\`, so the escaped text is one line, unambiguous, and
//! shows every byte that was there; printable text, non-ASCII letters
//! included, is unchanged.

use std::borrow::Cow;
use std::fmt::{self, Display, Write};

/// Values longer than this many characters are cut by [`escape_bounded`]
/// (a hub's error page can be megabytes).
pub const DEFAULT_MAX_CHARS: usize = 2000;

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` with every control, bidirectional-override and invisible formatting
/// character escaped (see the module docs); borrowed when nothing needs it.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape`], cut after `max_chars` characters of the input with a note
/// of how many were left out.
pub fn escape_bounded(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => escape(s).into_owned(),
        Some((cut, _)) => format!("{}... ({} more bytes)", escape(&s[..cut]), s.len() - cut),
    }
}

/// Displays a value escaped ([`escape_bounded`] at [`DEFAULT_MAX_CHARS`]):
/// `warn!(commitment = %Escaped(&c), ...)`.
pub struct Escaped<'a, T: Display + ?Sized>(pub &'a T);

impl<T: Display + ?Sized> Display for Escaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_bounded(&self.0.to_string(), DEFAULT_MAX_CHARS))
    }
}

impl<T: Display + ?Sized> fmt::Debug for Escaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_forged_commitment_is_one_inert_line() {
        let c = "me:tiny:abc:X\n2026-12-01T00:00:00Z INFO weights set FORGED\x1b]0;pwned\x07";
        let e = escape(c);
        assert_eq!(
            e,
            "me:tiny:abc:X\\n2026-12-01T00:00:00Z INFO weights set FORGED\\x1b]0;pwned\\x07"
        );
        assert!(!e.chars().any(|c| c.is_control()));
    }

    #[test]
    fn every_control_and_override_is_escaped_and_text_is_kept() {
        assert_eq!(escape("plain ascii: a/b"), "plain ascii: a/b");
        assert!(matches!(escape("naïve ünïcode 模型"), Cow::Borrowed(_)));
        assert_eq!(escape("a\rb\tc\0d\x7f"), "a\\rb\\tc\\x00d\\x7f");
        // C1 controls (the 8-bit CSI), the bidi overrides, a line separator.
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("x\u{2028}y\u{2066}"), "x\\u{2028}y\\u{2066}");
        // A backslash is doubled, so an escape in the input cannot pass
        // for one made here.
        assert_eq!(escape("\\n"), "\\\\n");
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let page = format!("<html>\n{}</html>", "é".repeat(5000));
        let e = escape_bounded(&page, 10);
        // 10 characters: `<html>`, the newline, three é (2 bytes each).
        assert_eq!(
            e,
            format!("<html>\\nééé... ({} more bytes)", page.len() - 13)
        );
        assert_eq!(escape_bounded("short", 10), "short");
        assert_eq!(Escaped("a\nb").to_string(), "a\\nb");
        assert_eq!(format!("{:?}", Escaped(&5)), "5");
    }
}
