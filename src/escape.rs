//! Text that came from elsewhere (an interpreter's stderr, a kernel's words), made safe to
//! print on the instructor's terminal: control characters other than newline and tab are
//! shown as `\xNN` / `\u{NNNN}` escapes, so nothing can move the cursor, retitle the window
//! or hide a line.

/// `s` with every control character but `\n` and `\t` escaped.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') => {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::text("a\x1b]0;t\x07b\r\n\tc\u{9b}\u{202e}"), "a\\x1b]0;t\\x07b\\x0d\n\tc\\u{009b}\\u{202e}");
        assert_eq!(super::text("plain text ü"), "plain text ü");
    }
}
