//! The server side of SPDY/3.1 framing, as far as Kubernetes' streaming protocols use it
//! (kubectl port-forward speaks `portforward.k8s.io` over it): control frames SYN_STREAM,
//! SYN_REPLY, RST_STREAM, PING, GOAWAY (SETTINGS, HEADERS and WINDOW_UPDATE are read and
//! ignored: Kubernetes' SPDY library does no flow control), and DATA frames. Header
//! blocks are zlib streams primed with the SPDY/3 dictionary, one per direction and
//! connection.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame payload read; Kubernetes' clients send at most 32 KiB of data per frame.
const MAX_FRAME: usize = 1 << 20;

/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 5;

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): these words,
/// each preceded by its length as 4 bytes big-endian, then the text of `DICT_TAIL`.
const DICT_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICT_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

pub fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1500);
    for w in DICT_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICT_TAIL.as_bytes());
    d
}

/// A frame as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        headers: Vec<(String, String)>,
        fin: bool,
    },
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    /// SYN_REPLY, SETTINGS, HEADERS, WINDOW_UPDATE and unknown types: nothing to do.
    Ignored,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]])).ok_or_else(|| bad("a frame is too short"))
}

/// Reads frames; holds the inbound header decompressor.
pub struct Reader<R> {
    io: R,
    inflate: Decompress,
    dict: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R) -> Self {
        Reader { io, inflate: Decompress::new(true), dict: dictionary() }
    }

    /// The next frame; None at a clean end of the connection.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(bad(format!("a {len}-byte frame is larger than {MAX_FRAME}")));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data { id, fin: flags & FLAG_FIN != 0, data: body }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(bad(format!("SPDY version {version} is not supported (only 3)")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(match kind {
            SYN_STREAM => {
                let id = u32_at(&body, 0)? & 0x7fff_ffff;
                let block = body.get(10..).ok_or_else(|| bad("SYN_STREAM is too short"))?;
                let headers = parse_headers(&self.inflate_block(block)?)?;
                Frame::SynStream { id, headers, fin: flags & FLAG_FIN != 0 }
            }
            SYN_REPLY | 8 => {
                // Headers must still be decompressed, to keep the zlib stream in step.
                let block = body.get(4..).ok_or_else(|| bad("a header frame is too short"))?;
                self.inflate_block(block)?;
                Frame::Ignored
            }
            RST_STREAM => Frame::RstStream { id: u32_at(&body, 0)? & 0x7fff_ffff, status: u32_at(&body, 4)? },
            PING => Frame::Ping(u32_at(&body, 0)?),
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        }))
    }

    fn inflate_block(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            if out.len() > MAX_FRAME {
                return Err(bad("a header block inflates past the frame limit"));
            }
            let mut primed = false;
            match self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&self.dict).map_err(|e| bad(format!("header dictionary: {e}")))?;
                    primed = true;
                }
                Err(e) => return Err(bad(format!("corrupt header block: {e}"))),
            }
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            let room = out.capacity() > out.len();
            if used == 0 && out.len() == before_out && !primed && room && !input.is_empty() {
                return Err(bad("a header block does not decompress"));
            }
            if input.is_empty() && out.capacity() > out.len() {
                return Ok(out);
            }
        }
    }
}

fn parse_headers(b: &[u8]) -> io::Result<Vec<(String, String)>> {
    let n = u32_at(b, 0)? as usize;
    let mut at = 4;
    let mut out = Vec::with_capacity(n.min(64));
    let field = |at: &mut usize| -> io::Result<String> {
        let len = u32_at(b, *at)? as usize;
        let s = b.get(*at + 4..*at + 4 + len).ok_or_else(|| bad("a header is cut short"))?;
        *at += 4 + len;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    for _ in 0..n {
        let name = field(&mut at)?;
        let value = field(&mut at)?;
        out.push((name.to_lowercase(), value));
    }
    Ok(out)
}

/// Encodes frames; holds the outbound header compressor (so SYN_REPLYs must be made in
/// the order they are sent).
pub struct Writer {
    deflate: Compress,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary()).expect("a fresh compressor takes a dictionary");
        Writer { deflate }
    }

    fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(8 + body.len());
        f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        f.extend_from_slice(&kind.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(body);
        f
    }

    /// SYN_REPLY accepting stream `id`, with no headers.
    pub fn syn_reply(&mut self, id: u32) -> Vec<u8> {
        let block = 0u32.to_be_bytes();
        let mut compressed = Vec::with_capacity(64);
        let _: Status =
            self.deflate.compress_vec(&block, &mut compressed, FlushCompress::Sync).expect("compressing into a Vec");
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&compressed);
        Self::control(SYN_REPLY, 0, &body)
    }

    pub fn data(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(8 + data.len());
        f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        f.push(if fin { FLAG_FIN } else { 0 });
        f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(data);
        f
    }

    pub fn rst_stream(id: u32, status: u32) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        Self::control(RST_STREAM, 0, &body)
    }

    pub fn ping(id: u32) -> Vec<u8> {
        Self::control(PING, 0, &id.to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's SYN_STREAM, compressed with the dictionary as a real client does.
    fn syn_stream(deflate: &mut Compress, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                block.extend_from_slice(s.as_bytes());
            }
        }
        let mut compressed = Vec::with_capacity(block.len() + 64);
        deflate.compress_vec(&block, &mut compressed, FlushCompress::Sync).unwrap();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&compressed);
        Writer::control(SYN_STREAM, 0, &body)
    }

    #[test]
    fn the_dictionary_is_the_one_of_spdy_3() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(d.ends_with(b"utf-,*,enq=0."));
    }

    #[tokio::test]
    async fn frames_and_compressed_headers_round_trip() {
        let mut client = Compress::new(Compression::default(), true);
        client.set_dictionary(&dictionary()).unwrap();
        let mut wire = syn_stream(&mut client, 1, &[("streamType", "error"), ("port", "80"), ("requestID", "0")]);
        // A second header block continues the same zlib stream.
        wire.extend(syn_stream(&mut client, 3, &[("streamtype", "data"), ("port", "80"), ("requestid", "0")]));
        wire.extend(Writer::data(3, true, b"GET /"));
        wire.extend(Writer::ping(7));
        wire.extend(Writer::rst_stream(3, CANCEL));
        let mut r = Reader::new(&wire[..]);
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynStream {
                id: 1,
                headers: vec![h("streamtype", "error"), h("port", "80"), h("requestid", "0")],
                fin: false
            })
        );
        assert!(matches!(r.next().await.unwrap(), Some(Frame::SynStream { id: 3, .. })));
        assert_eq!(r.next().await.unwrap(), Some(Frame::Data { id: 3, fin: true, data: b"GET /".to_vec() }));
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ping(7)));
        assert_eq!(r.next().await.unwrap(), Some(Frame::RstStream { id: 3, status: CANCEL }));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn replies_decompress_with_the_dictionary() {
        let mut w = Writer::new();
        let mut wire = w.syn_reply(1);
        wire.extend(w.syn_reply(3));
        let mut inflate = Decompress::new(true);
        let mut out = Vec::with_capacity(64);
        let first = &wire[12..];
        let err = inflate.decompress_vec(first, &mut out, FlushDecompress::Sync).unwrap_err();
        assert!(err.needs_dictionary().is_some(), "the stream names a preset dictionary");
        assert_eq!(wire[0..4], [0x80, 3, 0, 2]);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let wire = [0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xde, 0xad];
        let mut r = Reader::new(&wire[..]);
        assert!(r.next().await.is_err());
        let wire = [0x80, 2, 0, 1, 0, 0, 0, 0];
        assert!(Reader::new(&wire[..]).next().await.is_err());
    }
}
