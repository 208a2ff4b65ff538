//! A raw HTTP/2 client for hostile-caller tests: streams opened by hand, with
//! the flow-control windows and body pacing a test chooses (tonic's client
//! would read responses and finish bodies like a good citizen).

use std::{net::SocketAddr, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use h2::{
    SendStream,
    client::{ResponseFuture, SendRequest},
};
use http::{HeaderMap, Request, Response};
use tokio::net::TcpStream;

/// One HTTP/2 connection; its I/O runs on a spawned task.
pub struct RawH2 {
    pub send: SendRequest<Bytes>,
    /// Ends when the server closes the connection.
    pub closed: tokio::task::JoinHandle<()>,
}

impl RawH2 {
    /// Connects with the given per-stream receive window (`None`: h2's
    /// default of 64 KiB).
    pub async fn connect(addr: SocketAddr, window: Option<u32>) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut builder = h2::client::Builder::new();
        if let Some(w) = window {
            builder.initial_window_size(w);
        }
        let (send, conn) = builder.handshake(tcp).await.expect("h2 handshake");
        let closed = tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { send, closed }
    }

    /// Opens a stream with `headers` as a POST to `path`, once the server's
    /// stream limit allows (at most `wait`).
    pub async fn open(
        &self,
        path: &str,
        content_type: &str,
        wait: Duration,
    ) -> Option<(ResponseFuture, SendStream<Bytes>)> {
        self.open_with(path, &[("content-type", content_type)], wait)
            .await
    }

    /// [`RawH2::open`] with any request headers.
    pub async fn open_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        wait: Duration,
    ) -> Option<(ResponseFuture, SendStream<Bytes>)> {
        let ready = tokio::time::timeout(wait, self.send.clone().ready()).await;
        let mut send = ready.ok()?.ok()?;
        let mut req = Request::post(format!("http://localhost{path}")).header("te", "trailers");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        send.send_request(req.body(()).expect("request"), false)
            .ok()
    }

    /// A unary gRPC call whose body is sent at once.
    pub async fn call(&self, path: &str, body: Bytes) -> Option<ResponseFuture> {
        let (response, mut stream) = self
            .open(path, "application/grpc", Duration::from_secs(5))
            .await?;
        stream.send_data(body, true).ok()?;
        Some(response)
    }

    /// [`RawH2::call`] that must be answered; the answer's HTTP status.
    pub async fn call_status(&self, path: &str, body: Bytes) -> http::StatusCode {
        let response = self.call(path, body).await.expect("stream opened");
        response.await.expect("answered").status()
    }
}

/// `msg` as one gRPC message frame (uncompressed).
pub fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(len + 5);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf).expect("encode");
    buf.freeze()
}

/// The `grpc-status` of a trailers-only answer (in its headers), if any.
pub fn status_in_headers<T>(response: &Response<T>) -> Option<i32> {
    grpc_status(response.headers())
}

/// The `grpc-status` in `headers`.
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
