//! Test helpers for HTTP/2 cleartext (prior knowledge): a real h2 client
//! (the `h2` crate, which hyper uses), and a raw frame writer for the
//! abusive patterns a well-behaved client cannot produce.
#![allow(dead_code, missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;

use super::Resp;

/// The HTTP/2 connection preface a client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a [`Client`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1, one connection per request (`Connection: close`).
    H1,
    /// HTTP/2 with prior knowledge, every request a stream on one connection.
    H2,
}

/// A blocking client for either protocol.
pub struct Client {
    pub proto: Proto,
    pub addr: SocketAddr,
    rt: tokio::runtime::Runtime,
    h2: Option<SendRequest<Bytes>>,
}

impl Client {
    pub fn new(proto: Proto, addr: SocketAddr) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h2 = match proto {
            Proto::H1 => None,
            Proto::H2 => Some(rt.block_on(connect(addr))),
        };
        Client {
            proto,
            addr,
            rt,
            h2,
        }
    }

    pub fn req(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        match &mut self.h2 {
            None => super::request(self.addr, method, path, headers, body),
            Some(client) => {
                let body = body.map(|b| vec![Bytes::copy_from_slice(b)]);
                let addr = self.addr;
                self.rt.block_on(async move {
                    tokio::time::timeout(
                        Duration::from_secs(30),
                        send(client, addr, method, path, headers, body, true),
                    )
                    .await
                    .expect("h2 request timed out")
                })
            }
        }
    }

    /// An h2 request whose body goes out as `chunks` DATA frames with no
    /// `content-length` (HTTP/2's equivalent of chunked encoding).
    pub fn req_streamed(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        chunks: Vec<Bytes>,
    ) -> Resp {
        let addr = self.addr;
        let client = self.h2.as_mut().expect("an h2 client");
        self.rt.block_on(send(
            client,
            addr,
            method,
            path,
            headers,
            Some(chunks),
            false,
        ))
    }

    pub fn authed(&mut self, method: &str, path: &str, token: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {token}");
        self.req(
            method,
            path,
            &[("Authorization", &auth)],
            body.map(str::as_bytes),
        )
    }

    pub fn authorize(&mut self, token: &str, resource: &str, access: &str) -> Resp {
        self.authed(
            "GET",
            &format!("/v1/authorize?resource_type=RESOURCE_TYPE_{resource}&access_level=ACCESS_LEVEL_{access}"),
            token,
            None,
        )
    }
}

/// Opens an h2c connection (prior knowledge) and drives it on the current
/// runtime.
pub async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Sends one request on `client` and reads the whole response.
pub async fn send(
    client: &mut SendRequest<Bytes>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<Bytes>>,
    content_length: bool,
) -> Resp {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let (Some(chunks), true) = (&body, content_length) {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        request = request.header("content-length", len.to_string());
    }
    let request = request.body(()).unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(request, body.is_none()).unwrap();
    if let Some(chunks) = body {
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            // The server may answer (413, 401) and reset the stream before
            // it reads the whole body.
            if stream.send_data(chunk, i + 1 == n).is_err() {
                break;
            }
        }
    }
    let response = response.await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Resp {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect(),
        body: bytes,
    }
}

/// A raw HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An empty SETTINGS frame.
pub fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[])
}

/// A HEADERS frame (END_STREAM | END_HEADERS) for `GET path`, HPACK-encoded
/// with literals only (no Huffman, no dynamic table).
pub fn get_headers(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
    for (index, value) in [(4u8, path), (1u8, authority)] {
        // Literal without indexing, indexed name (:path = 4, :authority = 1).
        assert!(value.len() < 127);
        block.push(index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    frame(0x1, 0x4 | 0x1, stream, &block)
}

/// RST_STREAM with CANCEL.
pub fn rst_stream(stream: u32) -> Vec<u8> {
    frame(0x3, 0, stream, &0x8u32.to_be_bytes())
}
