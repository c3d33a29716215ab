//! Turns one line of a line-framed serial device into named, typed values.

use crate::config::{FieldType, LineParser};
use crate::registers::codec::Value;

/// Why a line gave no values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("line does not match the device's pattern")]
    NoMatch,
    #[error("field `{field}`: `{text}` is not {expected}")]
    BadField {
        field: String,
        text: String,
        expected: &'static str,
    },
    #[error("not a JSON object: {0}")]
    NotJson(String),
}

/// Values of one line, in pattern order. A regex group that is empty (a GPS receiver
/// without a fix sends empty fields) gives no value rather than an error.
pub fn parse_line(parser: &LineParser, line: &str) -> Result<Vec<(String, Value)>, ParseError> {
    match parser {
        LineParser::Regex { regex, fields } => {
            let captures = regex.captures(line).ok_or(ParseError::NoMatch)?;
            let mut values = Vec::new();
            for name in regex.capture_names().flatten() {
                let Some(text) = captures.name(name).map(|m| m.as_str()) else {
                    continue;
                };
                if text.is_empty() {
                    continue;
                }
                let field_type = fields.get(name).copied().unwrap_or(FieldType::String);
                values.push((name.to_owned(), typed(name, text, field_type)?));
            }
            Ok(values)
        }
        LineParser::Json => {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).map_err(|e| ParseError::NotJson(e.to_string()))?;
            Ok(object
                .iter()
                .filter_map(|(k, v)| Value::from_json(v).map(|v| (k.clone(), v)))
                .collect())
        }
    }
}

fn typed(field: &str, text: &str, field_type: FieldType) -> Result<Value, ParseError> {
    let bad = |expected| ParseError::BadField {
        field: field.to_owned(),
        text: text.to_owned(),
        expected,
    };
    let trimmed = text.trim();
    Ok(match field_type {
        FieldType::String => Value::Text(text.to_owned()),
        FieldType::F64 => Value::F64(trimmed.parse().map_err(|_| bad("a number"))?),
        FieldType::I64 => Value::I64(trimmed.parse().map_err(|_| bad("an integer"))?),
        FieldType::U64 => Value::U64(trimmed.parse().map_err(|_| bad("an unsigned integer"))?),
        FieldType::Bool => Value::Bool(match trimmed.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => true,
            "0" | "false" | "off" | "no" => false,
            _ => return Err(bad("a bool (1/0, true/false, on/off)")),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn gps() -> LineParser {
        LineParser::Regex {
            regex: regex::Regex::new(
                r"^\$GPGGA,(?P<utc>[^,]*),(?P<lat>[^,]*),(?P<ns>[NS]),(?P<lon>[^,]*),(?P<ew>[EW])",
            )
            .unwrap(),
            fields: BTreeMap::from([
                ("lat".to_string(), FieldType::F64),
                ("lon".to_string(), FieldType::F64),
            ]),
        }
    }

    #[test]
    fn regex_fields_are_typed() {
        let v = parse_line(
            &gps(),
            "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("utc".to_string(), Value::Text("123519".into())),
                ("lat".to_string(), Value::F64(4807.038)),
                ("ns".to_string(), Value::Text("N".into())),
                ("lon".to_string(), Value::F64(1131.0)),
                ("ew".to_string(), Value::Text("E".into())),
            ]
        );
    }

    #[test]
    fn garbage_and_bad_numbers_are_errors() {
        assert_eq!(parse_line(&gps(), "#@!garbage"), Err(ParseError::NoMatch));
        let err = parse_line(&gps(), "$GPGGA,1,48x7,N,011,E").unwrap_err();
        assert!(matches!(err, ParseError::BadField { ref field, .. } if field == "lat"));
    }

    #[test]
    fn empty_fields_are_skipped() {
        let v = parse_line(&gps(), "$GPGGA,123519,,N,,E").unwrap();
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn json_lines_keep_their_types() {
        let v = parse_line(
            &LineParser::Json,
            r#"{"weight": 12.5, "stable": true, "n": 3, "nested": {"x": 1}}"#,
        )
        .unwrap();
        assert!(v.contains(&("weight".to_string(), Value::F64(12.5))));
        assert!(v.contains(&("stable".to_string(), Value::Bool(true))));
        assert!(v.contains(&("n".to_string(), Value::U64(3))));
        assert_eq!(v.len(), 3);
        assert!(matches!(
            parse_line(&LineParser::Json, "not json"),
            Err(ParseError::NotJson(_))
        ));
    }
}
