//! The `/ptpchat/verbs/1` request-response protocol: one CBOR request per stream, one CBOR
//! response. Specified in `protocols/verbs.md`. Undecodable input is not a stream error:
//! it becomes [`Request::Malformed`] so the node can answer a NACK and count it.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::cbor;

/// The protocol name on the wire.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ptpchat/verbs/1");
/// Largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response accepted.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A request verb.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// GETCERTIFICATE: ask a peer for the identity document it holds for a UUID.
    GetCertificate {
        #[serde(with = "serde_bytes")]
        uuid: [u8; 16],
    },
    /// Not sent: what an undecodable request becomes on the receiving side.
    #[serde(skip)]
    Malformed(String),
}

/// A response verb.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// CERTIFICATE: the encoded signed identity document.
    Certificate {
        #[serde(with = "serde_bytes")]
        doc: Vec<u8>,
    },
    /// The peer holds nothing for that request.
    NotFound,
    /// The request was refused; `reason` is a short stable word (see protocols/verbs.md).
    Nack { reason: String },
}

/// The request-response codec with our size and depth limits.
#[derive(Clone, Default)]
pub struct Codec;

async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message over the {max}-byte limit"),
        ));
    }
    Ok(buf)
}

fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    cbor::to_vec(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Request> {
        let buf = match read_limited(io, MAX_REQUEST_BYTES).await {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Ok(Request::Malformed("too_large".into()))
            }
            Err(e) => return Err(e),
        };
        Ok(cbor::from_slice(&buf, MAX_REQUEST_BYTES)
            .unwrap_or_else(|e| Request::Malformed(e.to_string())))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Response> {
        let buf = read_limited(io, MAX_RESPONSE_BYTES).await?;
        cbor::from_slice(&buf, MAX_RESPONSE_BYTES)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> std::io::Result<()> {
        io.write_all(&encode(&req)?).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> std::io::Result<()> {
        io.write_all(&encode(&res)?).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_request_cannot_be_sent() {
        assert!(encode(&Request::Malformed("x".into())).is_err());
    }

    #[test]
    fn unknown_verbs_do_not_decode() {
        #[derive(Serialize)]
        enum Future {
            Teleport { to: u32 },
        }
        let bytes = cbor::to_vec(&Future::Teleport { to: 1 }).unwrap();
        assert!(cbor::from_slice::<Request>(&bytes, MAX_REQUEST_BYTES).is_err());
    }
}
