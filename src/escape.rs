//! Text that came from elsewhere (an interpreter's stderr, a kernel's words, a student's file
//! names and nbgrader's exceptions), made safe to show to the instructor:
//!
//! - [`text`] and [`line`], for a terminal or a log: control characters (C0, DEL, C1) and
//!   the invisible Unicode format characters (bidi overrides and isolates, zero-width
//!   characters, line and paragraph separators...) are shown as `\xNN` / `\u{NNNN}` escapes,
//!   so nothing can move the cursor, retitle the window, hide a line or reorder one;
//! - [`path`], for a file name that need not be UTF-8: undecodable bytes as `\xNN`;
//! - [`csv_cell`], for a spreadsheet: a cell that would be run as a formula is neutralised.

use std::os::unix::ffi::OsStrExt;

/// `s` with every control and format character but `\n` and `\t` escaped (multi-line text).
pub fn text(s: &str) -> String {
    escape(s, true)
}

/// `s` as one line: every control and format character escaped, `\n` and `\t` included, so
/// that one message can't end its line and print another that looks like ours.
pub fn line(s: &str) -> String {
    escape(s, false)
}

fn escape(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if keep_newlines => out.push(c),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || is_format(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Unicode's invisible format characters (category Cf, plus the line and paragraph
/// separators), the ones a terminal may act on or that hide what is printed: soft hyphen,
/// Arabic letter mark, Mongolian vowel separator, zero-width space/joiners and the
/// left-to-right/right-to-left marks, the separators, the bidi embeddings, overrides and
/// isolates, the invisible operators, the deprecated format characters, the byte-order mark,
/// interlinear annotations, and the tag characters.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{ad}'
        | '\u{61c}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

/// A path as one escaped line: bytes that are not UTF-8 as `\xNN`, the rest as [`line`].
pub fn path(p: &std::path::Path) -> String {
    escape_bytes(p.as_os_str().as_bytes(), false)
}

/// Bytes as [`text`] (multi-line): those that are not UTF-8 as `\xNN`.
pub fn bytes(b: &[u8]) -> String {
    escape_bytes(b, true)
}

fn escape_bytes(b: &[u8], keep_newlines: bool) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        out += &escape(chunk.valid(), keep_newlines);
        for b in chunk.invalid() {
            out += &format!("\\x{b:02x}");
        }
    }
    out
}

/// A CSV cell a spreadsheet shows as text: one that starts like a formula (`=`, `+`, `-`,
/// `@`, tab, carriage return; OWASP's list) gets a leading `'`, which spreadsheets take as
/// "this is text" and don't show.
pub fn csv_cell(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(text("a\x1b]0;t\x07b\r\n\tc\u{9b}\u{202e}"), "a\\x1b]0;t\\x07b\\x0d\n\tc\\u{009b}\\u{202e}");
        assert_eq!(text("plain text ü 日本"), "plain text ü 日本");
    }

    #[test]
    fn a_line_cannot_end_itself_or_hide_behind_format_characters() {
        // a file name that clears the screen, returns and prints a forged progress line
        let forged = "x\x1b]0;t\x07\x1b[2J\r\x1b[2K[1/1] mallory graded 10/10\nsecond\tline\x1b[8m";
        let shown = line(forged);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(shown, "x\\x1b]0;t\\x07\\x1b[2J\\x0d\\x1b[2K[1/1] mallory graded 10/10\\x0asecond\\x09line\\x1b[8m");
        for c in ['\u{202e}', '\u{2066}', '\u{2069}', '\u{200b}', '\u{200f}', '\u{2028}', '\u{feff}', '\u{e0041}'] {
            assert_eq!(line(&format!("a{c}b")), format!("a\\u{{{:04x}}}b", c as u32));
        }
    }

    #[test]
    fn paths_that_are_not_utf8_show_their_bytes() {
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"caf\xe9\x1b.txt"));
        assert_eq!(path(p), "caf\\xe9\\x1b.txt");
    }

    #[test]
    fn formula_cells_are_neutralised() {
        for bad in ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(csv_cell(bad), format!("'{bad}"));
        }
        for good in ["alice", "problem1.ipynb: a symlink", "", "1.5", "a=b"] {
            assert_eq!(csv_cell(good), good);
        }
    }
}
