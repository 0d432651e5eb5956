//! TFRecord framing, the container of TensorBoard event files: each record is
//!
//! ```text
//! u64 length (little-endian) | u32 masked CRC-32C of the length bytes | data | u32 masked CRC-32C of data
//! ```
//!
//! where masking is TensorFlow's `((crc >> 15) | (crc << 17)) + 0xa282ead8`
//! (`tensorflow/core/lib/hash/crc32c.h`), so a CRC stored inside checksummed data does not
//! checksum to a fixed value.

/// The masked CRC-32C of `data`, as TFRecord stores it.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// A TFRecord stream that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad TFRecord at byte {offset}: {what}")]
pub struct FrameError {
    /// Where the record starts.
    pub offset: usize,
    /// What is wrong with it.
    pub what: &'static str,
}

/// The records of a whole TFRecord stream, checksums verified.
pub fn unframe(mut bytes: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while !bytes.is_empty() {
        let bad = |what| FrameError { offset, what };
        if bytes.len() < 12 {
            return Err(bad("truncated header"));
        }
        let (len_bytes, rest) = bytes.split_at(8);
        let crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if crc != masked_crc32c(len_bytes) {
            return Err(bad("length checksum mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let rest = &rest[4..];
        if rest.len() < len.saturating_add(4) {
            return Err(bad("truncated data"));
        }
        let (data, rest) = rest.split_at(len);
        let crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if crc != masked_crc32c(data) {
            return Err(bad("data checksum mismatch"));
        }
        out.push(data);
        bytes = &rest[4..];
        offset += 16 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value (RFC 3720 B.4) and its masked form, as the `tensorboard` Python
    /// package computes it (`tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c`
    /// gives 0xc78ab0e5 and, for no bytes, 0xa282ead8).
    #[test]
    fn crc32c_and_its_mask() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
    }

    /// Records frame and unframe; a flipped bit in data or length, or a cut, is an error.
    #[test]
    fn frames_round_trip_and_damage_is_found() {
        let a = frame(b"hello");
        assert_eq!(a.len(), 5 + 16);
        let mut stream = a.clone();
        stream.extend(frame(b""));
        stream.extend(frame(&[7u8; 300]));
        let recs = unframe(&stream).unwrap();
        assert_eq!(recs, vec![&b"hello"[..], &b""[..], &[7u8; 300][..]]);
        let mut bad = stream.clone();
        bad[13] ^= 1;
        assert_eq!(unframe(&bad).unwrap_err().what, "data checksum mismatch");
        let mut bad = stream.clone();
        bad[21] ^= 1;
        assert_eq!(
            unframe(&bad).unwrap_err(),
            FrameError {
                offset: 21,
                what: "length checksum mismatch"
            }
        );
        assert_eq!(
            unframe(&stream[..stream.len() - 1]).unwrap_err().what,
            "truncated data"
        );
    }
}
