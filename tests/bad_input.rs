//! Hostile and malformed input, each answered with a documented status and
//! nothing written — after which the service still serves normally.
//! Raw protobuf bytes go through a pass-through codec; broken gRPC framing
//! and non-HTTP/2 bytes go over raw h2 and TCP.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::{Flavor, Plugin, RedisServer, redis_config, test_prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

/// Sends and receives message bodies as raw bytes.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_call(channel: Channel, method: &str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = method.parse().expect("path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// Sends one gRPC request with a hand-made body over raw HTTP/2 and returns
/// the `grpc-status` the server answered (from headers or trailers).
async fn h2_call(addr: std::net::SocketAddr, body: &'static [u8]) -> Option<i32> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (client, conn) = h2::client::handshake(tcp).await.ok()?;
    tokio::spawn(conn);
    let mut client = client.ready().await.ok()?;
    let req = http::Request::post(format!("http://{addr}/cache.v1.Cache/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .ok()?;
    let (resp, mut send) = client.send_request(req, false).ok()?;
    send.send_data(Bytes::from_static(body), true).ok()?;
    let resp = resp.await.ok()?;
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(code) = status_of(resp.headers()) {
        return Some(code);
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        chunk.ok()?;
    }
    body.trailers().await.ok()?.as_ref().and_then(status_of)
}

struct Fixture {
    _server: RedisServer,
    plugin: Plugin,
}

async fn fixture(name: &str) -> Fixture {
    let server = RedisServer::start(Flavor::Redis);
    let mut config = redis_config(&server, &test_prefix(name));
    config.backend.max_value_bytes = 1024;
    let plugin = Plugin::start_serving(config).await;
    Fixture {
        _server: server,
        plugin,
    }
}

impl Fixture {
    /// A raw call the plugin must reject; its status.
    async fn rejected(&self, path: &str, body: Bytes) -> Status {
        raw_call(self.plugin.channel().await, path, body)
            .await
            .expect_err("rejected")
    }

    /// The service still works and nothing was written by the bad calls.
    async fn still_serves_and_nothing_written(&self) {
        assert_eq!(self._server.dbsize(), 0, "nothing written by bad input");
        let mut client = self.plugin.cache().await;
        client
            .set("after", b"ok")
            .await
            .expect("serves after bad input");
        let r = client.get("after").await.expect("get");
        assert!(r.found);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_key_is_invalid_argument() {
    let f = fixture("utf8").await;
    // SetRequest{key: <0xff 0xfe>, value: "v"} with the key as raw bytes.
    let body = Bytes::from_static(&[0x0a, 0x02, 0xff, 0xfe, 0x12, 0x01, b'v']);
    let err = f.rejected("/cache.v1.Cache/Set", body).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed request"), "{err:?}");
    f.still_serves_and_nothing_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_protobuf_is_invalid_argument() {
    let f = fixture("truncated").await;
    let body = Bytes::from_static(&[0x0a, 0x20, b'a']);
    let err = f.rejected("/cache.v1.Cache/Set", body).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    f.still_serves_and_nothing_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_the_size_limit_is_refused_before_decoding() {
    let f = fixture("oversize").await;
    // Limit = largest legal request + 64 KiB; send 8 MiB.
    let mut big = vec![0x12u8];
    big.extend_from_slice(&[0x80, 0x80, 0x80, 0x04]); // varint 8 MiB
    big.resize(8 * 1024 * 1024 + 5, b'x');
    let err = f.rejected("/cache.v1.Cache/Set", big.into()).await;
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    f.still_serves_and_nothing_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_unimplemented() {
    let f = fixture("unknown").await;
    let err = f.rejected("/cache.v1.Cache/Nope", Bytes::new()).await;
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = f.rejected("/other.Service/Get", Bytes::new()).await;
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    f.still_serves_and_nothing_written().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_grpc_framing_is_answered_and_survived() {
    let f = fixture("garbage").await;
    let addr = f.plugin.addr;
    // A compression flag gRPC does not define.
    let code = h2_call(addr, &[7, 0, 0, 0, 1, 0x0a]).await;
    assert_eq!(code, Some(Code::Internal as i32));
    // A frame header promising more bytes than the stream carries.
    let code = h2_call(addr, &[0, 0, 0, 0, 100, 0x0a, 0x01]).await;
    assert_eq!(code, Some(Code::Internal as i32));
    // Bytes that are not HTTP/2 at all: the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(b"\x16\x03\x01 this is not http/2 \r\n\r\n")
        .await
        .expect("write");
    // Read to the end (a GOAWAY may come first): EOF or a reset within 2 s.
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = [0u8; 256];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a connection that is not HTTP/2 stays open");
    f.still_serves_and_nothing_written().await;
}

#[tokio::test]
async fn empty_and_oversized_fields_in_a_valid_message_name_their_limit() {
    let f = fixture("limits").await;
    let mut client = f.plugin.cache().await;
    let err = client.set("k", &[0u8; 1025]).await.expect_err("too big");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_value_bytes (1024)"));
    f.still_serves_and_nothing_written().await;
}
