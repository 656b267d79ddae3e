//! The snapshot channel between controller and dataplanes, as messages and
//! frames. No I/O: the controller and the dataplane move the bytes.
//!
//! One long-lived HTTP/2 request per dataplane, both directions at once:
//!
//! ```text
//!  dataplane ── POST /v1/snapshots, Authorization: Bearer … ──► controller
//!     request body:  Hello, then one Ack per snapshot received
//!     response body: the current Snapshot at once, then each new one
//! ```
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON. Frames over [`MAX_FRAME`] are refused, so a broken or hostile peer
//! cannot make the other side buffer without bound.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The path of the snapshot stream.
pub const PATH: &str = "/v1/snapshots";

/// Largest frame either side accepts: 64 MiB, room for tens of thousands
/// of routes.
pub const MAX_FRAME: usize = 64 << 20;

/// What a dataplane sends on its stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DataplaneMessage {
    /// First message: who is connecting and what it serves now.
    Hello(Hello),
    /// The outcome of applying one pushed snapshot.
    Ack(Ack),
}

/// A dataplane introducing itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Stable name of the dataplane (its pod name in a cluster).
    pub dataplane: String,
    /// Version it serves already (from its stored snapshot), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
}

/// A dataplane's answer to a pushed snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The snapshot version this answers.
    pub version: String,
    /// `None`: applied and serving. `Some(reason)`: rejected; the dataplane
    /// keeps serving what it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The JSON does not decode as the expected message.
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes one message as a frame.
///
/// # Errors
/// When the message's JSON exceeds [`MAX_FRAME`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0; 4];
    serde_json::to_writer(&mut frame, message)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    // Fits: MAX_FRAME is below 4 GiB.
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Reassembles frames from the chunks a stream delivers.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, if one has arrived.
    ///
    /// # Errors
    /// A frame over the limit or with malformed JSON; the stream should
    /// then be closed, since framing is lost.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        let Some(body) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let message = serde_json::from_slice(body)?;
        self.buf.drain(..4 + len);
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Snapshot;

    #[test]
    fn frames_survive_any_split() {
        let messages = [
            DataplaneMessage::Hello(Hello {
                dataplane: "pier-dataplane-0".into(),
                serving: Some("0123456789abcdef".into()),
            }),
            DataplaneMessage::Ack(Ack {
                version: "v".into(),
                rejected: None,
            }),
            DataplaneMessage::Ack(Ack {
                version: "w".into(),
                rejected: Some("inconsistent".into()),
            }),
        ];
        let stream: Vec<u8> = messages
            .iter()
            .flat_map(|m| encode(m).expect("encodes"))
            .collect();
        for chunk in [1, 3, 7, stream.len()] {
            let mut decoder = Decoder::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                while let Some(m) = decoder.decode::<DataplaneMessage>().expect("valid") {
                    got.push(m);
                }
            }
            assert_eq!(got, messages, "chunks of {chunk}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn snapshots_round_trip_and_stay_consistent() {
        let snapshot = Snapshot::empty();
        let mut decoder = Decoder::default();
        decoder.push(&encode(&snapshot).expect("encodes"));
        let back: Snapshot = decoder.decode().expect("valid").expect("complete");
        assert_eq!(back, snapshot);
        assert!(back.is_consistent());
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut decoder = Decoder::default();
        decoder.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decoder.decode::<Ack>(),
            Err(WireError::TooLarge(_))
        ));

        let mut decoder = Decoder::default();
        decoder.push(&[0, 0, 0, 2, b'{', b'x']);
        assert!(matches!(decoder.decode::<Ack>(), Err(WireError::Json(_))));
    }
}
