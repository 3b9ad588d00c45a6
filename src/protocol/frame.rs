//! Stream framing for the relay: finds message boundaries in bytes as they pass,
//! without buffering or decoding what is only forwarded.
//!
//! A regular protocol message is a type byte, then a big-endian u32 length that counts
//! itself but not the type byte, then the body. [`FrameScanner`] is fed every chunk
//! read from a socket, in order, and reports each complete message's type and end
//! offset; for the few types the proxy must look inside (ReadyForQuery's status, a
//! ParameterStatus) it collects the body, even when it straddles chunks. A chunk can
//! then be written on unchanged, so a large DataRow costs one header read, not a copy.

/// The largest body the scanner will collect for inspection; bigger inspected
/// messages are reported with an empty body.
const MAX_CAPTURE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: u32 },
    #[error("message of type {tag:?} is {len} bytes, larger than the limit of {limit} bytes")]
    TooLarge { tag: char, len: usize, limit: usize },
}

/// The length field of a message header (type byte, then the big-endian u32 length
/// that counts itself and the body but not the type byte). The one place a length
/// is decoded.
pub fn length_field(header: &[u8; 5]) -> u32 {
    u32::from_be_bytes([header[1], header[2], header[3], header[4]])
}

/// Total size (type byte included) of the message at the front of `buf` when it is
/// complete, None when more bytes are needed, an error for a length below 4 or over
/// `max_len`.
pub fn complete_message_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.first_chunk::<5>() else {
        return Ok(None);
    };
    let len = length_field(header);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: header[0] as char,
            len,
        });
    }
    if len as usize > max_len {
        return Err(FrameError::TooLarge {
            tag: header[0] as char,
            len: len as usize,
            limit: max_len,
        });
    }
    let total = 1 + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Length of the complete messages at the front of `buf` (0 when the first is partial
/// or invalid).
pub fn complete_prefix(buf: &[u8], max_len: usize) -> usize {
    let mut end = 0;
    while let Ok(Some(len)) = complete_message_len(&buf[end..], max_len) {
        end += len;
    }
    end
}

/// One complete message in a buffer: its type, its body and its whole bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub tag: u8,
    pub body: &'a [u8],
    pub bytes: &'a [u8],
}

/// The complete messages at the front of a buffer, in order; stops at the first
/// partial or invalid one. [`Messages::consumed`] says how far it got.
pub struct Messages<'a> {
    buf: &'a [u8],
    at: usize,
    max_len: usize,
}

impl<'a> Messages<'a> {
    pub fn new(buf: &'a [u8], max_len: usize) -> Messages<'a> {
        Messages {
            buf,
            at: 0,
            max_len,
        }
    }

    /// Bytes of the messages returned so far.
    pub fn consumed(&self) -> usize {
        self.at
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let rest = &self.buf[self.at..];
        let len = complete_message_len(rest, self.max_len).ok()??;
        self.at += len;
        Some(Message {
            tag: rest[0],
            body: &rest[5..len],
            bytes: &rest[..len],
        })
    }
}

/// A complete message seen by the scanner.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    /// The body, only for tags the scanner was asked to capture (else empty).
    pub body: &'a [u8],
    /// Offset just past this message in the chunk that completed it.
    pub end: usize,
}

/// Receives message boundaries from [`FrameScanner::scan_with`].
pub trait FrameVisitor {
    /// A message with type `tag` starts at offset `at` of the current chunk.
    fn start(&mut self, tag: u8, at: usize);
    /// A message completed.
    fn end(&mut self, frame: Frame<'_>);
}

pub struct FrameScanner {
    header: [u8; 5],
    header_len: usize,
    tag: u8,
    remaining: usize,
    capturing: bool,
    captured: Vec<u8>,
    max_len: usize,
    capture: fn(u8) -> bool,
}

impl FrameScanner {
    /// `max_len` bounds the length field (body plus the 4 length bytes); `capture`
    /// says which message types' bodies are collected.
    pub fn new(max_len: usize, capture: fn(u8) -> bool) -> FrameScanner {
        FrameScanner {
            header: [0; 5],
            header_len: 0,
            tag: 0,
            remaining: 0,
            capturing: false,
            captured: Vec::new(),
            max_len,
            capture,
        }
    }

    /// Gives back a capture buffer that grew past `above` bytes.
    pub fn shrink(&mut self, above: usize) {
        if self.captured.capacity() > above && self.captured.is_empty() {
            self.captured = Vec::new();
        }
    }

    /// Forgets any partial message, keeping the capture buffer's allocation: a
    /// scanner reused for a new stream (the next server of a pooled session).
    pub fn reset(&mut self) {
        self.header_len = 0;
        self.remaining = 0;
        self.capturing = false;
        self.captured.clear();
    }

    /// True when the bytes fed so far end exactly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Feeds the next chunk of the stream, calling `on_frame` for every message that
    /// completes inside it.
    pub fn scan(
        &mut self,
        chunk: &[u8],
        on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), FrameError> {
        struct Ends<F>(F);
        impl<F: FnMut(Frame<'_>)> FrameVisitor for Ends<F> {
            fn start(&mut self, _tag: u8, _at: usize) {}
            fn end(&mut self, frame: Frame<'_>) {
                (self.0)(frame)
            }
        }
        self.scan_with(chunk, &mut Ends(on_frame))
    }

    /// Like [`scan`](Self::scan), also telling the visitor where each message starts
    /// (at its type byte), so it can decide what to do with a message's bytes before
    /// any of them pass.
    pub fn scan_with(
        &mut self,
        chunk: &[u8],
        visitor: &mut impl FrameVisitor,
    ) -> Result<(), FrameError> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.at_boundary() && chunk.len() - pos >= 5 {
                // The common case: a whole header in this chunk, read in place.
                let tag = chunk[pos];
                visitor.start(tag, pos);
                let len = chunk[pos..].first_chunk::<5>().map_or(0, length_field);
                self.begin(tag, len)?;
                pos += 5;
                let body_end = pos + self.remaining;
                if body_end <= chunk.len() {
                    // ... and its whole body: no copy even for a captured one.
                    self.remaining = 0;
                    let body = if self.capturing {
                        &chunk[pos..body_end]
                    } else {
                        &[]
                    };
                    visitor.end(Frame {
                        tag,
                        body,
                        end: body_end,
                    });
                    pos = body_end;
                }
                continue;
            }
            if self.remaining == 0 && self.header_len < 5 {
                if self.header_len == 0 {
                    visitor.start(chunk[pos], pos);
                }
                pos = self.read_header(chunk, pos)?;
                if self.remaining == 0 && self.header_len == 5 {
                    self.header_len = 0;
                    visitor.end(Frame {
                        tag: self.tag,
                        body: &[],
                        end: pos,
                    });
                }
                continue;
            }
            let take = self.remaining.min(chunk.len() - pos);
            if self.capturing {
                self.captured.extend_from_slice(&chunk[pos..pos + take]);
            }
            pos += take;
            self.remaining -= take;
            if self.remaining == 0 {
                self.header_len = 0;
                let body: &[u8] = if self.capturing { &self.captured } else { &[] };
                visitor.end(Frame {
                    tag: self.tag,
                    body,
                    end: pos,
                });
                self.captured.clear();
            }
        }
        Ok(())
    }

    fn read_header(&mut self, chunk: &[u8], mut pos: usize) -> Result<usize, FrameError> {
        let need = 5 - self.header_len;
        let take = need.min(chunk.len() - pos);
        self.header[self.header_len..self.header_len + take]
            .copy_from_slice(&chunk[pos..pos + take]);
        self.header_len += take;
        pos += take;
        if self.header_len < 5 {
            return Ok(pos);
        }
        self.begin(self.header[0], length_field(&self.header))?;
        Ok(pos)
    }

    /// Checks a message's length field and starts on its body.
    fn begin(&mut self, tag: u8, len: u32) -> Result<(), FrameError> {
        if len < 4 {
            return Err(FrameError::BadLength {
                tag: tag as char,
                len,
            });
        }
        let len = len as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                tag: tag as char,
                len,
                limit: self.max_len,
            });
        }
        self.tag = tag;
        self.remaining = len - 4;
        self.capturing = (self.capture)(tag) && self.remaining <= MAX_CAPTURE;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::test_message as message;

    #[test]
    fn incomplete_and_oversized_messages() {
        assert_eq!(complete_message_len(b"Q\0\0", 100), Ok(None));
        assert_eq!(
            complete_message_len(&message(b'Q', b"x\0"), 100),
            Ok(Some(7))
        );
        assert!(complete_message_len(&message(b'Q', &[b'x'; 200]), 100).is_err());
        assert!(complete_message_len(&[b'Q', 0, 0, 0, 1], 100).is_err());
    }

    #[test]
    fn messages_iterates_complete_messages_and_stops_at_a_partial_one() {
        let query = message(b'Q', b"select 1\0");
        let sync = message(b'S', b"");
        let buf = [query.clone(), sync.clone(), query[..4].to_vec()].concat();
        let mut messages = Messages::new(&buf, 1 << 20);
        let first = messages.next().expect("query");
        assert_eq!(
            (first.tag, first.body, first.bytes),
            (b'Q', &b"select 1\0"[..], &query[..])
        );
        assert_eq!(messages.next().map(|m| m.tag), Some(b'S'));
        assert_eq!(messages.next(), None);
        assert_eq!(messages.consumed(), query.len() + sync.len());
        assert_eq!(complete_prefix(&buf, 1 << 20), query.len() + sync.len());
        assert_eq!(complete_prefix(&[], 1 << 20), 0);
    }

    fn stream() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(message(b'T', b"rowdesc"));
        bytes.extend(message(b'D', &[7u8; 300]));
        bytes.extend(message(b'S', b"TimeZone\0UTC\0"));
        bytes.extend(message(b'C', b"SELECT 1\0"));
        bytes.extend(message(b'1', b""));
        bytes.extend(message(b'Z', b"I"));
        bytes
    }

    fn capture_z_and_s(tag: u8) -> bool {
        tag == b'Z' || tag == b'S'
    }

    fn frames_with_chunk_size(bytes: &[u8], size: usize) -> Vec<(u8, Vec<u8>)> {
        let mut scanner = FrameScanner::new(1 << 20, capture_z_and_s);
        let mut seen = Vec::new();
        for chunk in bytes.chunks(size) {
            scanner
                .scan(chunk, |f| {
                    assert!(f.end <= chunk.len());
                    seen.push((f.tag, f.body.to_vec()));
                })
                .expect("valid stream");
        }
        assert!(scanner.at_boundary());
        seen
    }

    #[test]
    fn every_chunking_sees_the_same_frames() {
        let bytes = stream();
        let whole = frames_with_chunk_size(&bytes, bytes.len());
        let tags: Vec<u8> = whole.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"TDSC1Z".to_vec());
        assert_eq!(whole[2].1, b"TimeZone\0UTC\0".to_vec());
        assert_eq!(whole[5].1, b"I".to_vec());
        assert!(whole[1].1.is_empty(), "DataRow is never collected");
        for size in 1..bytes.len() {
            assert_eq!(
                frames_with_chunk_size(&bytes, size),
                whole,
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn end_offsets_point_past_each_message() {
        let bytes = stream();
        let mut ends = Vec::new();
        let mut scanner = FrameScanner::new(1 << 20, |_| false);
        scanner.scan(&bytes, |f| ends.push(f.end)).expect("valid");
        assert_eq!(ends.last(), Some(&bytes.len()));
        assert_eq!(ends[0], 1 + 4 + 7);
    }

    #[test]
    fn oversized_and_malformed_lengths_are_errors() {
        let mut scanner = FrameScanner::new(100, |_| false);
        let err = scanner.scan(&message(b'Q', &[b'x'; 200]), |_| {});
        assert!(matches!(
            err,
            Err(FrameError::TooLarge {
                tag: 'Q',
                len: 204,
                ..
            })
        ));
        let mut scanner = FrameScanner::new(100, |_| false);
        let err = scanner.scan(&[b'Q', 0, 0, 0, 3], |_| {});
        assert_eq!(err, Err(FrameError::BadLength { tag: 'Q', len: 3 }));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut scanner = FrameScanner::new(4096, |_| true);
            let len = (seed % 64) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xff) as u8
                })
                .collect();
            let _ = scanner.scan(&data, |_| {});
        }
    }
}
