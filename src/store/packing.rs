//! Payloads are stored zstd-compressed (the row's `compressed` column is 1) when that
//! makes them smaller by an eighth or more: every queued row is written at least twice
//! (to the WAL, then to the database), and fewer bytes per row is less wear on an SD
//! card. The `size` column keeps the payload's own length, which `max_bytes` counts and
//! which bounds what a stored row may decompress to.

use std::cell::RefCell;

/// Payloads shorter than this are stored as they are.
const MIN_PACKED: usize = 64;
/// Stored compressed only when that saves at least this fraction (1/8) of the payload:
/// every send decompresses the row again, which a few bytes saved do not repay (a
/// 100-byte reading shrinks by about 7 %).
const MIN_SAVING: usize = 8;
/// zstd's fastest level: JSON of live values compresses about 2x at it.
const LEVEL: i32 = 1;

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The compressed form of `payload`, if it is enough smaller.
pub(super) fn pack(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < MIN_PACKED {
        return None;
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let compressor = match cell.as_mut() {
            Some(compressor) => compressor,
            None => cell.insert(zstd::bulk::Compressor::new(LEVEL).ok()?),
        };
        let packed = compressor.compress(payload).ok()?;
        (packed.len() <= payload.len() - payload.len() / MIN_SAVING).then_some(packed)
    })
}

/// A stored payload back as it was enqueued; `size` is the length it had.
pub(super) fn unpack(stored: &[u8], compressed: bool, size: i64) -> Result<Vec<u8>, String> {
    if !compressed {
        return Ok(stored.to_vec());
    }
    let size = usize::try_from(size).map_err(|_| format!("stored size {size}"))?;
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(decompressor) => decompressor,
            None => cell.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
        };
        let payload = decompressor
            .decompress(stored, size)
            .map_err(|error| format!("compressed payload damaged: {error}"))?;
        if payload.len() == size {
            Ok(payload)
        } else {
            Err(format!(
                "compressed payload damaged: {} bytes instead of {size}",
                payload.len()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u32) -> Vec<u8> {
        let tags: Vec<String> = (0..50)
            .map(|i| format!("\"h{i}\":{}", (seed * 7919 + i * 104_729) % 100_000))
            .collect();
        format!("{{{}}}", tags.join(",")).into_bytes()
    }

    #[test]
    fn json_values_are_stored_smaller_and_read_back_exactly() {
        let payload = values(3);
        let packed = pack(&payload).expect("compressible");
        assert!(
            packed.len() * 3 < payload.len() * 2,
            "{} -> {} bytes",
            payload.len(),
            packed.len()
        );
        let size = payload.len() as i64;
        assert_eq!(unpack(&packed, true, size).unwrap(), payload);
    }

    #[test]
    fn short_or_incompressible_payloads_are_stored_as_they_are() {
        assert_eq!(pack(br#"{"seq":1}"#), None);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..512)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert_eq!(pack(&noise), None);
        assert_eq!(unpack(&noise, false, 0).unwrap(), noise);
    }

    #[test]
    fn a_payload_that_shrinks_by_less_than_an_eighth_is_stored_as_it_is() {
        let reading = br#"{"d":{"temperature":21.5,"pressure":1.013,"pump_on":true,"seq":12345},"ts":"2026-11-21T10:15:30.120Z"}"#;
        let compressed = zstd::bulk::compress(reading, LEVEL).unwrap().len();
        assert!(
            compressed < reading.len() && compressed * 8 > reading.len() * 7,
            "{} -> {compressed} bytes",
            reading.len()
        );
        assert_eq!(pack(reading), None);
    }

    #[test]
    fn a_damaged_row_is_an_error_not_a_wrong_payload() {
        let payload = values(5);
        let mut packed = pack(&payload).unwrap();
        let size = payload.len() as i64;
        assert!(unpack(&packed, true, size - 1).is_err(), "size lies");
        let middle = packed.len() / 2;
        packed.truncate(middle);
        let error = unpack(&packed, true, size).unwrap_err();
        assert!(error.contains("damaged"), "{error}");
    }
}
