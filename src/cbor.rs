//! CBOR encoding for everything ptpchat puts on the wire, in the DHT or on disk.
//!
//! One crate (cbor4ii, the one libp2p's own CBOR codec uses) behind two functions, so
//! every decoder in the program gets the same limits: a maximum input length, a maximum
//! nesting depth, and no trailing bytes. Unknown map keys are ignored by serde's derive;
//! missing or wrongly typed fields are errors.

use cbor4ii::core::dec;
use serde::{de::DeserializeOwned, Serialize};

/// Deepest nesting any ptpchat structure needs (a document holding a list of links
/// holding byte strings is depth 3); unknown fields may add a little.
pub const MAX_DEPTH: usize = 16;

/// Why a CBOR value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error("input is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the CBOR value")]
    TrailingBytes(usize),
}

/// Encodes a value. Our types contain nothing serde cannot encode, so this only fails
/// on a programming error, which is reported rather than panicking.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CborError> {
    cbor4ii::serde::to_vec(Vec::new(), value).map_err(|e| CborError::Malformed(e.to_string()))
}

/// Decodes one value from `bytes`, refusing input longer than `max_len`, nesting deeper
/// than [`MAX_DEPTH`], and trailing bytes.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CborError> {
    if bytes.len() > max_len {
        return Err(CborError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let mut de = cbor4ii::serde::Deserializer::new(LimitedReader {
        buf: bytes,
        depth_left: MAX_DEPTH,
    });
    let value = T::deserialize(&mut de).map_err(|e| CborError::Malformed(e.to_string()))?;
    let rest = de.into_inner().buf.len();
    if rest != 0 {
        return Err(CborError::TrailingBytes(rest));
    }
    Ok(value)
}

/// A slice reader with our depth limit (cbor4ii's own allows 256 levels).
struct LimitedReader<'a> {
    buf: &'a [u8],
    depth_left: usize,
}

impl<'de> dec::Read<'de> for LimitedReader<'de> {
    type Error = std::convert::Infallible;

    fn fill<'b>(&'b mut self, want: usize) -> Result<dec::Reference<'de, 'b>, Self::Error> {
        let len = want.min(self.buf.len());
        Ok(dec::Reference::Long(&self.buf[..len]))
    }

    fn advance(&mut self, n: usize) {
        let len = n.min(self.buf.len());
        self.buf = &self.buf[len..];
    }

    fn step_in(&mut self) -> bool {
        match self.depth_left.checked_sub(1) {
            Some(left) => {
                self.depth_left = left;
                true
            }
            None => false,
        }
    }

    fn step_out(&mut self) {
        self.depth_left += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        a: u32,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn round_trips_and_ignores_unknown_fields() {
        let s = Sample {
            a: 7,
            b: vec![1, 2],
        };
        let bytes = to_vec(&s).unwrap();
        assert_eq!(from_slice::<Sample>(&bytes, 64).unwrap(), s);

        #[derive(Serialize)]
        struct Newer {
            a: u32,
            #[serde(with = "serde_bytes")]
            b: Vec<u8>,
            extra: Vec<u32>,
        }
        let newer = to_vec(&Newer {
            a: 7,
            b: vec![1, 2],
            extra: vec![1],
        })
        .unwrap();
        assert_eq!(from_slice::<Sample>(&newer, 64).unwrap(), s);
    }

    #[test]
    fn rejects_missing_and_wrong_typed_fields() {
        #[derive(Serialize)]
        struct OnlyA {
            a: u32,
        }
        let bytes = to_vec(&OnlyA { a: 1 }).unwrap();
        assert!(from_slice::<Sample>(&bytes, 64).is_err());
        #[derive(Serialize)]
        struct WrongB {
            a: u32,
            b: String,
        }
        let bytes = to_vec(&WrongB {
            a: 1,
            b: "x".into(),
        })
        .unwrap();
        assert!(from_slice::<Sample>(&bytes, 64).is_err());
    }

    #[test]
    fn rejects_oversized_deep_and_trailing_input() {
        let bytes = to_vec(&Sample {
            a: 1,
            b: vec![0; 100],
        })
        .unwrap();
        assert!(matches!(
            from_slice::<Sample>(&bytes, 50),
            Err(CborError::TooLarge { .. })
        ));

        // An unknown field nested 100 arrays deep: the depth limit stops it.
        let mut deep = vec![0xa3, 0x61, b'a', 0x01, 0x61, b'b', 0x40, 0x61, b'x'];
        deep.extend(std::iter::repeat_n(0x81, 100));
        deep.push(0x00);
        assert!(matches!(
            from_slice::<Sample>(&deep, 1024),
            Err(CborError::Malformed(_))
        ));

        let mut trailing = to_vec(&Sample { a: 1, b: vec![] }).unwrap();
        trailing.push(0);
        assert!(matches!(
            from_slice::<Sample>(&trailing, 64),
            Err(CborError::TrailingBytes(1))
        ));

        // Truncated input and random garbage are errors, never panics.
        assert!(from_slice::<Sample>(&bytes[..bytes.len() - 3], 1024).is_err());
        assert!(from_slice::<Sample>(&[0xff, 0x00, 0x13], 1024).is_err());
        // A byte string claiming 2^63 bytes.
        assert!(
            from_slice::<Sample>(&[0xa1, 0x61, b'b', 0x5b, 0x7f, 0, 0, 0, 0, 0, 0, 0], 1024)
                .is_err()
        );
    }
}
