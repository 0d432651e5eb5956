//! Framing: every connection starts with both sides sending [`MAGIC`] and their
//! [`PROTOCOL_VERSION`] (so a version mismatch is named on both ends, never misparsed), then
//! exchanges bincode messages, each preceded by its length as a little-endian `u32`.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Read, Write};

/// First bytes either side sends on a rendezvous connection.
pub const MAGIC: &[u8; 8] = b"MNISTRZV";
/// Version of the messages this program speaks; both sides must agree.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest message accepted (a store value is at most a few kilobytes in practice).
pub const MAX_FRAME: usize = 16 << 20;

/// Send the preamble: magic and protocol version.
pub fn write_preamble(s: &mut impl Write) -> io::Result<()> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    s.write_all(&b)
}

/// What the other side's preamble said.
#[derive(Debug, PartialEq, Eq)]
pub enum Preamble {
    /// A rendezvous peer speaking this version.
    Ok,
    /// A rendezvous peer speaking another protocol version.
    Version(u32),
    /// Not a rendezvous peer at all (another program on that port).
    Foreign,
}

/// Read the other side's preamble.
pub fn read_preamble(s: &mut impl Read) -> io::Result<Preamble> {
    let mut b = [0u8; 12];
    s.read_exact(&mut b)?;
    if &b[..8] != MAGIC {
        return Ok(Preamble::Foreign);
    }
    let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    Ok(if v == PROTOCOL_VERSION {
        Preamble::Ok
    } else {
        Preamble::Version(v)
    })
}

/// Send one message.
pub fn write_frame<T: Serialize>(s: &mut impl Write, m: &T) -> io::Result<()> {
    let body = bincode::serialize(m).map_err(io::Error::other)?;
    let mut b = (body.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&body);
    s.write_all(&b)
}

/// Receive one message (an undecodable one is an `InvalidData` error).
pub fn read_frame<T: DeserializeOwned>(s: &mut impl Read) -> io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {n} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    bincode::deserialize(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_preambles_round_trip() {
        let mut buf = Vec::new();
        write_preamble(&mut buf).unwrap();
        write_frame(&mut buf, &("key".to_string(), vec![1u8, 2, 3])).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_preamble(&mut r).unwrap(), Preamble::Ok);
        let (k, v): (String, Vec<u8>) = read_frame(&mut r).unwrap();
        assert_eq!((k.as_str(), v), ("key", vec![1, 2, 3]));
        let mut other = MAGIC.to_vec();
        other.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            read_preamble(&mut &other[..]).unwrap(),
            Preamble::Version(7)
        );
        assert_eq!(
            read_preamble(&mut &b"GET / HTTP/1.1\r\n"[..]).unwrap(),
            Preamble::Foreign
        );
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let e = read_frame::<u8>(&mut &huge[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
