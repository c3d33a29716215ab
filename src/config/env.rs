//! `${VAR}` substitution on the text of the configuration file, before it is parsed.
//!
//! `${VAR}` is replaced by the variable's value, `${VAR:-default}` falls back to
//! `default` when the variable is unset or empty, and `$${` stands for a literal
//! `${`. Comments are left alone, so a commented-out line never needs its variables.
//! Values may not contain line breaks: that keeps every line number of the file valid
//! for error messages.

use super::error::Position;

/// Why substitution failed; the caller adds the file name and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubstitutionError {
    pub position: Position,
    pub message: String,
}

/// One replaced reference: where it is in the substituted text, and how many
/// characters it had before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edit {
    line: usize,
    /// 1-based column of the replacement in the substituted text.
    column: usize,
    old_len: usize,
    new_len: usize,
}

/// The substituted text, and what is needed to map its positions back to the file.
#[derive(Debug, Default)]
pub(crate) struct Substituted {
    pub text: String,
    edits: Vec<Edit>,
}

impl Substituted {
    /// The position in the original file of `at`, a position in the substituted text
    /// (lines are kept; columns move when a value differs in length from its reference).
    pub(crate) fn original(&self, at: Position) -> Position {
        let mut column = at.column;
        for edit in self.edits.iter().filter(|e| e.line == at.line) {
            if at.column >= edit.column + edit.new_len {
                column = (column + edit.old_len).saturating_sub(edit.new_len);
            } else if at.column >= edit.column {
                // Inside a substituted value: point at its reference.
                column = (column + edit.column).saturating_sub(at.column);
            }
        }
        Position {
            line: at.line,
            column,
        }
    }
}

/// Replaces the variable references in `text`, looking values up with `lookup`.
pub(crate) fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Substituted, SubstitutionError> {
    let mut out = Substituted {
        text: String::with_capacity(text.len()),
        edits: Vec::new(),
    };
    for (index, line) in text.split_inclusive('\n').enumerate() {
        substitute_line(line, index + 1, lookup, &mut out)?;
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

fn substitute_line(
    line: &str,
    line_number: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    substituted: &mut Substituted,
) -> Result<(), SubstitutionError> {
    let Substituted { text: out, edits } = substituted;
    let line_start = out.len();
    let mut quote = Quote::None;
    let mut previous: Option<char> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let starts_token = previous.is_none_or(|p| p.is_whitespace() || "[{,".contains(p));
        match (quote, c) {
            (Quote::None, '#') if previous.is_none_or(char::is_whitespace) => {
                out.push_str(&line[at..]);
                return Ok(());
            }
            (Quote::None, '\'') if starts_token => quote = Quote::Single,
            (Quote::None, '"') if starts_token => quote = Quote::Double,
            (Quote::Single, '\'') => {
                // `''` is an escaped quote inside a single-quoted scalar.
                if chars.peek().is_some_and(|&(_, next)| next == '\'') {
                    out.push(c);
                    chars.next();
                } else {
                    quote = Quote::None;
                }
            }
            (Quote::Double, '"') => quote = Quote::None,
            (Quote::Double, '\\') => {
                out.push(c);
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                    previous = Some(escaped);
                }
                continue;
            }
            (_, '$') if line[at..].starts_with("$${") => {
                edits.push(Edit {
                    line: line_number,
                    column: out[line_start..].chars().count() + 1,
                    old_len: 3,
                    new_len: 2,
                });
                out.push_str("${");
                chars.next();
                chars.next();
                previous = Some('{');
                continue;
            }
            (_, '$') if line[at..].starts_with("${") => {
                let position = Position {
                    line: line_number,
                    column: line[..at].chars().count() + 1,
                };
                let column = out[line_start..].chars().count() + 1;
                let before = out.len();
                let consumed = expand(&line[at..], position, lookup, out)?;
                edits.push(Edit {
                    line: line_number,
                    column,
                    old_len: line[at..at + consumed].chars().count(),
                    new_len: out[before..].chars().count(),
                });
                let end = at + consumed;
                while chars.peek().is_some_and(|&(i, _)| i < end) {
                    chars.next();
                }
                previous = Some('}');
                continue;
            }
            _ => {}
        }
        out.push(c);
        previous = Some(c);
    }
    Ok(())
}

/// Expands the reference at the start of `text` (which begins with `${`) into `out`
/// and returns how many bytes of `text` it spans.
fn expand(
    text: &str,
    position: Position,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<usize, SubstitutionError> {
    let fail = |message: String| SubstitutionError { position, message };
    let close = text.find('}').ok_or_else(|| {
        fail("`${` is not closed by `}` on the same line (write `$${` for a literal `${`)".into())
    })?;
    let inner = &text[2..close];
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(fail(format!(
            "`${{{inner}}}` is not a variable reference: names are letters, digits and `_`, not starting with a digit (write `$${{` for a literal `${{`)"
        )));
    }
    let value = match (lookup(name), default) {
        (Some(value), Some(default)) if value.is_empty() => default.to_owned(),
        (Some(value), _) => value,
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            return Err(fail(format!(
            "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
        )))
        }
    };
    if value.contains(['\n', '\r']) {
        return Err(fail(format!(
            "environment variable `{name}` contains a line break, which is not allowed in a substituted value"
        )));
    }
    out.push_str(&value);
    Ok(close + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, SubstitutionError> {
        substitute(text, &env).map(|s| s.text)
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(run("token: ${TOKEN}\n").unwrap(), "token: s3cret\n");
        assert_eq!(run("a: \"x${TOKEN}y\"").unwrap(), "a: \"xs3crety\"");
        assert_eq!(run("a: ${UNSET:-fallback}").unwrap(), "a: fallback");
        assert_eq!(run("a: ${EMPTY:-fallback}").unwrap(), "a: fallback");
        assert_eq!(run("a: ${EMPTY}").unwrap(), "a: ");
        assert_eq!(run("a: 'été ${TOKEN}'").unwrap(), "a: 'été s3cret'");
    }

    #[test]
    fn escapes_and_comments_are_kept() {
        assert_eq!(run("a: $${TOKEN}").unwrap(), "a: ${TOKEN}");
        assert_eq!(run("a: $HOME").unwrap(), "a: $HOME");
        assert_eq!(run("# token: ${UNSET}\n").unwrap(), "# token: ${UNSET}\n");
        assert_eq!(run("a: 1  # ${UNSET}").unwrap(), "a: 1  # ${UNSET}");
        assert_eq!(run("a: '#${TOKEN}'").unwrap(), "a: '#s3cret'");
        assert_eq!(
            run("a: \"\\\" # ${TOKEN}\"").unwrap(),
            "a: \"\\\" # s3cret\""
        );
        assert_eq!(run("url: x#${TOKEN}").unwrap(), "url: x#s3cret");
    }

    #[test]
    fn positions_map_back_to_the_original_columns() {
        //           col:   1234567890123456789012345678
        let original = "a: { t: ${TOKEN}, b: $${x}, c: 1 }";
        let substituted = substitute(original, &env).unwrap();
        assert_eq!(substituted.text, "a: { t: s3cret, b: ${x}, c: 1 }");
        let at = |column| substituted.original(Position { line: 1, column }).column;
        assert_eq!(at(6), 6, "before any reference");
        assert_eq!(at(9), 9, "start of the value");
        assert_eq!(at(12), 9, "inside the value");
        assert_eq!(at(17), 19, "`b` after the value");
        assert_eq!(at(26), 29, "`c` after both");
        let other_line = substituted.original(Position {
            line: 2,
            column: 27,
        });
        assert_eq!(other_line.column, 27);
    }

    #[test]
    fn errors_name_the_position_and_variable() {
        let e = run("a: 1\nb: x ${NOPE}\n").unwrap_err();
        assert_eq!(e.position, Position { line: 2, column: 6 });
        assert!(e.message.contains("`NOPE` is not set"), "{}", e.message);

        let e = run("b: ${MULTI}").unwrap_err();
        assert!(e.message.contains("line break"), "{}", e.message);
        assert!(!e.message.contains("a\nb"));

        let e = run("b: ${TOKEN").unwrap_err();
        assert!(e.message.contains("not closed"), "{}", e.message);

        let e = run("b: ${1X}").unwrap_err();
        assert!(
            e.message.contains("not a variable reference"),
            "{}",
            e.message
        );
    }
}
