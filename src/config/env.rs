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

/// Replaces the variable references in `text`, looking values up with `lookup`.
pub(crate) fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, SubstitutionError> {
    let mut out = String::with_capacity(text.len());
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
    out: &mut String,
) -> Result<(), SubstitutionError> {
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
                let consumed = expand(&line[at..], position, lookup, out)?;
                // Skip the rest of the reference (all ASCII up to the closing brace
                // or validated characters).
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
        substitute(text, &env)
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
