//! CBOR encoding for everything ptpchat puts on the wire, in the DHT or on disk.
//!
//! One crate (cbor4ii, the one libp2p's own CBOR codec uses) behind two functions, so
//! every decoder in the program gets the same limits: a maximum input length, a maximum
//! nesting depth, a maximum number of items, and no trailing bytes. Counts are checked
//! before serde sees them: a pass over the item headers (no allocation) refuses a value
//! with more than [`MAX_ITEMS`] items, or a length that the rest of the input cannot hold. Unknown map keys are ignored by serde's derive;
//! missing or wrongly typed fields are errors.

use cbor4ii::core::dec;
use serde::{de::DeserializeOwned, Serialize};

/// Deepest nesting any ptpchat structure needs (a document holding a list of links
/// holding byte strings is depth 3); unknown fields may add a little.
pub const MAX_DEPTH: usize = 16;

/// Most CBOR items (every array element, map key and value, string and number) in one
/// decoded value. The largest ptpchat structures hold a few hundred (a 256-frame history
/// page, a 256-member key grant, a channel row of up to 1,024 members heard); without this
/// a 1 MiB request of one-byte items would make a million allocations.
pub const MAX_ITEMS: usize = 16 * 1024;

/// Why a CBOR value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error("input is {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the CBOR value")]
    TrailingBytes(usize),
    #[error("more than {max} CBOR items")]
    TooManyItems { max: usize },
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
    check_shape(bytes, MAX_ITEMS)?;
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

/// Walks the item headers of the first CBOR value in `bytes` without decoding it: refuses
/// more than `max_items` items, nesting deeper than [`MAX_DEPTH`], and any string, array or
/// map length the rest of the input cannot hold (each item takes at least one byte), so
/// the decoder never sees a count it would allocate for. Trailing bytes are left to the
/// caller.
fn check_shape(bytes: &[u8], max_items: usize) -> Result<(), CborError> {
    /// An indefinite-length container, closed by a break byte. Never a real count: a
    /// definite count is at most the input length.
    const UNTIL_BREAK: u64 = u64::MAX;
    let malformed = |what: &str| Err(CborError::Malformed(what.into()));
    // Items still expected by each open container, the outermost being the value itself.
    let mut open: Vec<u64> = Vec::with_capacity(MAX_DEPTH + 1);
    open.push(1);
    let mut pos = 0usize;
    let mut items = 0usize;
    while let Some(top) = open.last_mut() {
        if *top == 0 {
            open.pop();
            continue;
        }
        let Some(&initial) = bytes.get(pos) else {
            return malformed("truncated");
        };
        pos += 1;
        if initial == 0xff {
            if *top != UNTIL_BREAK {
                return malformed("unexpected break");
            }
            open.pop();
            continue;
        }
        if *top != UNTIL_BREAK {
            *top -= 1;
        }
        items += 1;
        if items > max_items {
            return Err(CborError::TooManyItems { max: max_items });
        }
        let (major, info) = (initial >> 5, initial & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let n = 1usize << (info - 24);
                let Some(b) = bytes.get(pos..pos + n) else {
                    return malformed("truncated");
                };
                pos += n;
                Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
            }
            31 if (2..=5).contains(&major) => None,
            _ => return malformed("reserved additional information"),
        };
        let left = (bytes.len() - pos) as u64;
        let pending = match (major, arg) {
            (0 | 1 | 7, _) => continue,
            (2 | 3, Some(len)) => {
                if len > left {
                    return malformed("string longer than the input");
                }
                pos += len as usize;
                continue;
            }
            (2..=5, None) => UNTIL_BREAK,
            (4, Some(n)) if n <= left => n,
            // A tag applies to the one item after it.
            (6, Some(_)) => 1,
            (5, Some(n)) if n.checked_mul(2).is_some_and(|n| n <= left) => n * 2,
            _ => return malformed("count larger than the input"),
        };
        if open.len() > MAX_DEPTH {
            return malformed("nested too deeply");
        }
        open.push(pending);
    }
    Ok(())
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
        // An unknown map key or an undefined simple value are still errors, not panics.
        assert!(from_slice::<Sample>(&[0xa1, 0x1c], 1024).is_err());
        // A byte string claiming 2^63 bytes.
        assert!(
            from_slice::<Sample>(&[0xa1, 0x61, b'b', 0x5b, 0x7f, 0, 0, 0, 0, 0, 0, 0], 1024)
                .is_err()
        );
    }

    /// A 1 MiB request that is one array of empty byte strings (`0x40`) is refused by the
    /// item count before serde allocates anything for it.
    #[test]
    fn refuses_a_million_items_before_decoding_them() {
        /// The shape of a MESSAGE request (`wire::verbs`), which sits above this module.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Request {
            Message { sealed: Vec<serde_bytes::ByteBuf> },
        }
        let n: u32 = 1024 * 1024;
        // {"Message": {"sealed": [h'', h'', ...]}}
        let mut bytes = vec![0xa1, 0x67];
        bytes.extend_from_slice(b"Message");
        bytes.extend_from_slice(&[0xa1, 0x66]);
        bytes.extend_from_slice(b"sealed");
        bytes.push(0x9a);
        bytes.extend_from_slice(&n.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0x40, n as usize));
        let started = std::time::Instant::now();
        let r = from_slice::<Request>(&bytes, 2 * 1024 * 1024);
        assert!(
            matches!(r, Err(CborError::TooManyItems { max: MAX_ITEMS })),
            "{r:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // The same count in an indefinite-length array, and in a map.
        bytes[17] = 0x9f;
        bytes.drain(18..22);
        bytes.push(0xff);
        assert!(matches!(
            from_slice::<Request>(&bytes, 2 * 1024 * 1024),
            Err(CborError::TooManyItems { .. })
        ));

        // Counts the input cannot hold are refused without walking them.
        for claim in [
            vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![0x9a, 0, 0, 0, 2, 0x40],
        ] {
            assert!(matches!(
                from_slice::<Vec<serde_bytes::ByteBuf>>(&claim, 1024),
                Err(CborError::Malformed(_))
            ));
        }

        // Just under the limit still decodes.
        let fine: Vec<serde_bytes::ByteBuf> = vec![serde_bytes::ByteBuf::new(); MAX_ITEMS - 1];
        let bytes = to_vec(&fine).unwrap();
        assert_eq!(
            from_slice::<Vec<serde_bytes::ByteBuf>>(&bytes, 1 << 20)
                .unwrap()
                .len(),
            MAX_ITEMS - 1
        );
    }
}
