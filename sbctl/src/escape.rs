//! Names and text from a set, made safe to print on a terminal.
//!
//! A file name can hold any byte but `/` and NUL, so a set from a stranger (a pull request to a
//! set repository) can name a file `\x1b]0;...\x07orders.json` and have sbctl's error message
//! retitle, recolour or clear the operator's terminal. Every name sbctl prints from a set goes
//! through [`name`] or [`path`]; everything sbctl writes to stderr also goes through
//! [`terminal`], which catches what any other message carries (an item's JSON keys in a schema
//! violation, a coordinator's error text).
//!
//! Ordinary names, including non-ASCII ones, print unchanged; only characters a terminal acts
//! on are written as Rust-style escapes (`\u{1b}`, `\n`, `\t`).

use std::path::Path;

/// Whether a terminal would act on `c` rather than show it: control characters (C0, DEL and
/// C1, which start escape sequences or move the cursor) and the bidirectional formatting
/// characters, which reorder the text shown around them.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        other => out.push_str(&format!("\\u{{{:x}}}", other as u32)),
    }
}

/// A name from a set (a file, a directory, a link's target) as sbctl prints it. A backslash is
/// doubled, so that a name cannot spell out an escape and pass for another name.
pub fn name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if acts_on_terminal(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// A path as sbctl prints it: [`name`] of its text (bytes that are not UTF-8 show as U+FFFD).
pub fn path(path: &Path) -> String {
    name(&path.to_string_lossy())
}

/// A message as written to the terminal: its line ends and tabs kept, every other character a
/// terminal would act on escaped. Backslashes are kept as they are, since the names in the
/// message were already escaped by [`name`].
pub fn terminal(text: &str) -> String {
    if !text
        .chars()
        .any(|c| acts_on_terminal(c) && c != '\n' && c != '\t')
    {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts_on_terminal(c) && c != '\n' && c != '\t' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_print_unchanged() {
        for ordinary in [
            "tables/sales/orders.json",
            "bad key.json",
            "Bestellungen-größe.yaml",
            "注文.yml",
            "it's \"quoted\".json",
        ] {
            assert_eq!(name(ordinary), ordinary);
            assert_eq!(terminal(ordinary), ordinary);
        }
    }

    #[test]
    fn control_and_bidirectional_characters_are_escaped() {
        assert_eq!(name("a\x1b[31mred.json"), "a\\u{1b}[31mred.json");
        assert_eq!(name("two\nlines\t.json"), "two\\nlines\\t.json");
        assert_eq!(name("c1\u{9b}31m"), "c1\\u{9b}31m");
        assert_eq!(name("del\u{7f}"), "del\\u{7f}");
        assert_eq!(name("evil\u{202e}nosj.exe"), "evil\\u{202e}nosj.exe");
        for escaped in [
            name("\x1b\x07\u{9b}\u{202e}\u{2066}"),
            path(Path::new("x\x1by")),
        ] {
            assert!(!escaped.chars().any(acts_on_terminal), "{escaped:?}");
        }
    }

    #[test]
    fn a_name_cannot_spell_an_escape() {
        assert_eq!(name("a\\u{1b}.json"), "a\\\\u{1b}.json");
        assert_ne!(name("a\\u{1b}.json"), name("a\x1b.json"));
    }

    #[test]
    fn terminal_text_keeps_its_lines_and_escapes_the_rest() {
        let message = "set has 2 problems:\n  a\x1b[2J.json: cannot read\n\tb\u{9b}.json";
        assert_eq!(
            terminal(message),
            "set has 2 problems:\n  a\\u{1b}[2J.json: cannot read\n\tb\\u{9b}.json"
        );
        assert_eq!(
            terminal("already \\u{1b} escaped"),
            "already \\u{1b} escaped"
        );
    }
}
