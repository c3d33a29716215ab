//! How a read hands its rows over from SQLite's thread: one blob per read, every row in
//! it as `id,kind,compressed,size,at,device bytes,event bytes,payload bytes,` followed
//! by the device, the event and the stored payload as they are.
//!
//! sqlx hands a result over row by row, waking the reader for many of them, which cost
//! more than reading the rows (the drain benchmark: 17.4 against 13.4 µs of CPU per
//! message). A JSON array of the rows did it in one piece, but SQLite escaped every
//! string and wrote the payload in hexadecimal, and the reader parsed it all back.

/// A read of queued rows whose result is one [`document`](self) (NULL for no rows),
/// in id order. Lengths are in bytes also for a payload stored as text, whose
/// `length()` would count characters.
macro_rules! rows_document {
    ($($filter:tt)+) => {
        concat!(
            "SELECT CAST(group_concat(concat_ws(',', id, kind, compressed, size, at, ",
            "octet_length(device), octet_length(event), octet_length(payload), ",
            "device || event || payload), '') AS BLOB) FROM (SELECT id, device, event, ",
            "kind, payload, compressed, size, at FROM queue WHERE ",
            $($filter)+,
            " ORDER BY id LIMIT ?)"
        )
    };
}
pub(super) use rows_document;

/// The columns of `queue` a session reads, borrowed from the document.
#[derive(Debug, PartialEq)]
pub(super) struct DocumentRow<'a> {
    pub id: i64,
    pub kind: i64,
    pub compressed: bool,
    /// The payload's own length (it may be stored compressed).
    pub size: i64,
    pub at: i64,
    pub device: &'a str,
    pub event: &'a str,
    pub stored: &'a [u8],
}

/// The rows of a document, in its order.
pub(super) fn rows(document: &[u8]) -> Result<Vec<DocumentRow<'_>>, String> {
    let mut rest = document;
    let mut rows = Vec::new();
    while !rest.is_empty() {
        let [id, kind, compressed, size, at, device, event, stored] =
            [(); 8].map(|()| number(&mut rest));
        let id = id?;
        let (device, event, stored) = (device?, event?, stored?);
        rows.push(DocumentRow {
            id,
            kind: kind?,
            compressed: compressed? != 0,
            size: size?,
            at: at?,
            device: text(id, take(id, &mut rest, device)?)?,
            event: text(id, take(id, &mut rest, event)?)?,
            stored: take(id, &mut rest, stored)?,
        });
    }
    Ok(rows)
}

/// The number `rest` starts with, up to its comma.
fn number(rest: &mut &[u8]) -> Result<i64, String> {
    let end = rest
        .iter()
        .position(|&byte| byte == b',')
        .ok_or("a row's numbers end early")?;
    let digits = std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())?;
    let value = digits
        .parse()
        .map_err(|_| format!("{digits:?} is not a number"))?;
    *rest = &rest[end + 1..];
    Ok(value)
}

/// The first `length` bytes of `rest`, of row `id`.
fn take<'a>(id: i64, rest: &mut &'a [u8], length: i64) -> Result<&'a [u8], String> {
    let length = usize::try_from(length)
        .ok()
        .filter(|&length| length <= rest.len())
        .ok_or_else(|| format!("row {id}: {length} bytes, {} left", rest.len()))?;
    let (taken, after) = rest.split_at(length);
    *rest = after;
    Ok(taken)
}

fn text(id: i64, bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|error| format!("row {id}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_each_other_with_any_bytes_in_their_payloads() {
        let document = b"7,1,0,3,1700,2,6,3,d1status\0,\xff12,0,1,40,1701,3,1,0,d\xc3\xa9x";
        let rows = rows(document).unwrap();
        assert_eq!(
            rows,
            vec![
                DocumentRow {
                    id: 7,
                    kind: 1,
                    compressed: false,
                    size: 3,
                    at: 1700,
                    device: "d1",
                    event: "status",
                    stored: b"\0,\xff",
                },
                DocumentRow {
                    id: 12,
                    kind: 0,
                    compressed: true,
                    size: 40,
                    at: 1701,
                    device: "dé",
                    event: "x",
                    stored: b"",
                },
            ]
        );
        assert_eq!(super::rows(b"").unwrap(), Vec::new());
    }

    #[test]
    fn a_damaged_document_is_an_error() {
        for (document, error) in [
            (&b"7,1,0,3"[..], "a row's numbers end early"),
            (b"7,1,x,3,1700,2,6,3,d1status123", "\"x\" is not a number"),
            (b"7,1,0,3,1700,2,6,4,d1status123", "row 7: 4 bytes, 3 left"),
            (b"7,1,0,3,1700,2,6,-1,d1status", "row 7: -1 bytes, 0 left"),
            (b"7,1,0,3,1700,2,1,0,\xff\xfex", "row 7: invalid utf-8"),
        ] {
            let found = rows(document).unwrap_err();
            assert!(found.starts_with(error), "{found:?} for {document:?}");
        }
    }
}
