//! Length-delimited framing with precise errors.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::error::TcpError;
use crate::wire::ClientFrame;

/// Bytes in a frame's length prefix (a big-endian `u32`).
const HEAD_LEN: usize = 4;

/// A [`LengthDelimitedCodec`] (4-byte big-endian length prefix) that reports oversized and
/// truncated frames as [`TcpError`]s and whose limit can be raised after the handshake.
///
/// The limit is checked on the length prefix, before any of the frame is buffered, so a
/// remote cannot make this side allocate more than the limit for one frame.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
    /// True once the inner codec consumed a frame's length prefix and waits for its body.
    in_frame: bool,
}

impl FrameCodec {
    /// A codec that accepts frames of at most `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(HEAD_LEN)
            .big_endian()
            .max_frame_length(max)
            .new_codec();
        FrameCodec {
            inner,
            max,
            in_frame: false,
        }
    }

    /// Changes the limit for later frames.
    pub(crate) fn set_max_frame_size(&mut self, max: usize) {
        self.max = max;
        self.inner.set_max_frame_length(max);
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = TcpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TcpError> {
        if !self.in_frame {
            if let Some(&[a, b, c, d]) = src.get(..HEAD_LEN) {
                let len = u32::from_be_bytes([a, b, c, d]);
                if u64::from(len) > self.max as u64 {
                    return Err(TcpError::FrameTooLarge {
                        len: u64::from(len),
                        max: self.max,
                    });
                }
            }
        }
        let before = src.len();
        match self.inner.decode(src)? {
            Some(frame) => {
                self.in_frame = false;
                Ok(Some(frame))
            }
            None => {
                // The inner codec consumes the prefix as soon as it has it.
                if src.len() < before {
                    self.in_frame = true;
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, TcpError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && !self.in_frame => Ok(None),
            None => Err(TcpError::TruncatedFrame),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = TcpError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), TcpError> {
        if item.len() > self.max {
            return Err(TcpError::FrameTooLarge {
                len: item.len() as u64,
                max: self.max,
            });
        }
        self.inner.encode(item, dst)?;
        Ok(())
    }
}

/// The codec of a client connection once its handshake is done: the same frames as
/// [`FrameCodec`], written from [`ClientFrame`]s (call id, tag, body) so that a client
/// connection cannot send a frame without a call id.
///
/// Frames read are bounded by the inner codec's limit, frames written by `max_out`: a
/// server reads small requests and may write larger responses.
#[derive(Debug)]
pub(crate) struct ClientCodec {
    pub(crate) inner: FrameCodec,
    pub(crate) max_out: usize,
}

impl ClientCodec {
    /// A client codec reading with `inner`'s limit and writing frames up to `max_out`.
    pub(crate) fn new(inner: FrameCodec, max_out: usize) -> Self {
        ClientCodec { inner, max_out }
    }
}

impl Decoder for ClientCodec {
    type Item = BytesMut;
    type Error = TcpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TcpError> {
        self.inner.decode(src)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, TcpError> {
        self.inner.decode_eof(buf)
    }
}

impl Encoder<ClientFrame> for ClientCodec {
    type Error = TcpError;

    /// Writes the same 4-byte big-endian length prefix as [`FrameCodec`], then the call
    /// id, the tag (if any) and the body.
    fn encode(&mut self, item: ClientFrame, dst: &mut BytesMut) -> Result<(), TcpError> {
        let len = item.len();
        let max = self.max_out;
        // The limit is at most 1 GiB, so a frame within it has a `u32` length.
        let prefix = match u32::try_from(len) {
            Ok(prefix) if len <= max => prefix,
            _ => {
                return Err(TcpError::FrameTooLarge {
                    len: len as u64,
                    max,
                })
            }
        };
        dst.reserve(HEAD_LEN + len);
        dst.put_u32(prefix);
        dst.put_u64(item.call);
        if let Some(tag) = item.tag {
            dst.put_u8(tag);
        }
        dst.put_slice(&item.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<BytesMut>, TcpError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"hello"), &mut buf).ok();
        codec.encode(Bytes::new(), &mut buf).ok();
        let frames = decode_all(&mut codec, &buf).ok();
        assert_eq!(
            frames,
            Some(vec![BytesMut::from(&b"hello"[..]), BytesMut::new()])
        );
    }

    #[test]
    fn oversized_prefix_is_refused_before_buffering() {
        let mut codec = FrameCodec::new(16);
        let err = decode_all(&mut codec, &[0, 0, 0, 17]).err();
        assert!(matches!(
            err,
            Some(TcpError::FrameTooLarge { len: 17, max: 16 })
        ));
        let mut codec = FrameCodec::new(16);
        let err = decode_all(&mut codec, &[0xff, 0xff, 0xff, 0xff]).err();
        assert!(matches!(
            err,
            Some(TcpError::FrameTooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
    }

    #[test]
    fn truncation_is_detected_in_head_and_body() {
        for bytes in [&[0u8, 0][..], &[0, 0, 0, 5][..], &[0, 0, 0, 5, 1, 2][..]] {
            let mut codec = FrameCodec::new(16);
            let err = decode_all(&mut codec, bytes).err();
            assert!(
                matches!(err, Some(TcpError::TruncatedFrame)),
                "{bytes:?}: {err:?}"
            );
        }
    }

    #[test]
    fn client_frames_decode_as_ordinary_frames() {
        let mut codec = ClientCodec::new(FrameCodec::new(16), 16);
        let mut buf = BytesMut::new();
        let frame = ClientFrame::request(0x0102, Bytes::from_static(b"hi"));
        assert!(codec.encode(frame, &mut buf).is_ok());
        let frames = decode_all(&mut codec.inner, &buf).ok();
        assert_eq!(
            frames,
            Some(vec![BytesMut::from(
                &[0, 0, 0, 0, 0, 0, 1, 2, b'h', b'i'][..]
            )])
        );
        // Nine bytes of body make a 17-byte frame: refused, nothing written.
        let mut buf = BytesMut::new();
        let frame = ClientFrame::request(1, Bytes::from_static(&[0; 9]));
        let err = codec.encode(frame, &mut buf).err();
        assert!(matches!(
            err,
            Some(TcpError::FrameTooLarge { len: 17, max: 16 })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_refuses_oversized() {
        let mut codec = FrameCodec::new(4);
        let mut buf = BytesMut::new();
        let err = codec.encode(Bytes::from_static(b"12345"), &mut buf).err();
        assert!(matches!(
            err,
            Some(TcpError::FrameTooLarge { len: 5, max: 4 })
        ));
        assert!(buf.is_empty());
    }
}
