//! The one error type of the library and its mapping to gRPC status codes.
//!
//! Backends, the service, admission and the codec speak [`Error`] (or
//! [`Rejected`]); only the two `From<_> for Status` here know about gRPC
//! codes: no other file builds a `Status`. Messages never carry values or credentials — callers see
//! the field and limit that was broken, or a generic reason.

use tonic::{Code, Status};

/// Everything a cache operation can fail with, by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke a documented limit; nothing was written.
    #[error("{0}")]
    InvalidArgument(String),
    /// The stored value does not allow the operation (Incr on a value that
    /// is not an integer, of another type, or a sum out of range); nothing
    /// was written.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Redis refused the key or command under our ACL user (NOPERM).
    #[error("permission denied by the cache server's ACL")]
    PermissionDenied,
    /// Redis rejected our credentials (WRONGPASS/NOAUTH); the caller retries
    /// after one credential refresh, then reports it as unavailable.
    #[error("cache server rejected the credentials")]
    Auth,
    /// Redis cannot be reached, the pool is exhausted or the circuit is open.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// The operation ran past `operation_timeout` or the caller's deadline;
    /// a write may or may not have been applied.
    #[error("cache operation timed out after {0:?}; a write may or may not have been applied")]
    DeadlineExceeded(std::time::Duration),
    /// The answer (a value, or the values of one MGet) is larger than
    /// `backend.max_reply_bytes`; nothing was buffered or returned.
    #[error(
        "reply larger than backend.max_reply_bytes ({0} bytes); ask for fewer or smaller values"
    )]
    ReplyTooLarge(usize),
    /// Anything unexpected; logged with a request id, reported generically.
    #[error("internal error: {0}")]
    Internal(String),
    /// An [`Error::Internal`] already logged under this request id: all the
    /// caller sees, so the detail stays in our log.
    #[error("internal error (request id {0})")]
    Logged(u64),
    /// The caller went away or broke its request stream mid-way.
    #[error("{0}")]
    Cancelled(String),
}

impl Error {
    /// Short label used as the `status` of operation metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::PermissionDenied => "permission_denied",
            Error::Auth | Error::Unavailable(_) => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::ReplyTooLarge(_) => "resource_exhausted",
            Error::Internal(_) | Error::Logged(_) => "internal",
            Error::Cancelled(_) => "cancelled",
        }
    }

    /// True when the failure says the connection itself is unusable, so the
    /// health prober should look now rather than at its next tick.
    pub fn is_connection_failure(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Auth)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::Auth | Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::ReplyTooLarge(_) => Code::ResourceExhausted,
            Error::Internal(_) | Error::Logged(_) => Code::Internal,
            Error::Cancelled(_) => Code::Cancelled,
        };
        Status::new(code, err.to_string())
    }
}

impl From<Rejected> for Status {
    fn from(why: Rejected) -> Self {
        let code = match &why {
            Rejected::Requests(_) | Rejected::Bytes { .. } => Code::ResourceExhausted,
            Rejected::ReadTimeout(_) => Code::DeadlineExceeded,
            Rejected::Draining => Code::Unavailable,
        };
        Status::new(code, why.to_string())
    }
}

/// The answer to a call refused for `max_concurrent_requests`, built once:
/// under overload refusals are the common case, and each one then copies
/// these headers instead of formatting, percent-encoding and storing its
/// message again.
pub struct Refusal {
    headers: http::HeaderMap,
}

impl Refusal {
    /// The refusal for a limit of `limit` calls in flight.
    pub fn too_many_requests(limit: usize) -> Self {
        let answer: http::Response<()> = Status::from(Rejected::Requests(limit)).into_http();
        Self {
            headers: answer.into_parts().0.headers,
        }
    }

    /// A trailers-only gRPC response carrying the refusal.
    pub fn response<B: Default>(&self) -> http::Response<B> {
        let mut answer = http::Response::new(B::default());
        *answer.headers_mut() = self.headers.clone();
        answer
    }
}

/// Why a request was refused before (or instead of) running.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("too many requests in flight (max_concurrent_requests = {0})")]
    Requests(usize),
    #[error(
        "{what} of {bytes} bytes does not fit in {budget} ({limit} bytes) with what is already in flight"
    )]
    Bytes {
        what: &'static str,
        bytes: usize,
        budget: &'static str,
        limit: usize,
    },
    #[error(
        "request body not received within {0:?} (request_read_timeout or the caller's deadline); nothing was written"
    )]
    ReadTimeout(std::time::Duration),
    /// Prism's `Drain` closed the plugin to new data calls.
    #[error("the plugin is draining (Prism Drain); new calls are refused, retry elsewhere")]
    Draining,
}

impl Rejected {
    /// The `reason` label of `redis_plugin_requests_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Requests(_) => "max_concurrent_requests",
            Rejected::Bytes { budget, .. } => budget,
            Rejected::ReadTimeout(_) => "request_read_timeout",
            Rejected::Draining => "draining",
        }
    }
}

/// Result of a cache operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prebuilt_refusal_is_the_same_answer_as_a_fresh_one() {
        let fresh: http::Response<()> = Status::from(Rejected::Requests(64)).into_http();
        let built: http::Response<()> = Refusal::too_many_requests(64).response();
        assert_eq!(built.status(), fresh.status());
        assert_eq!(built.headers(), fresh.headers());
        let code = built.headers().get("grpc-status").expect("grpc-status");
        assert_eq!(code, &(Code::ResourceExhausted as i32).to_string());
    }

    #[test]
    fn every_variant_maps_to_its_contract_code() {
        let cases = [
            (Error::InvalidArgument("key".into()), Code::InvalidArgument),
            (
                Error::FailedPrecondition("not an integer".into()),
                Code::FailedPrecondition,
            ),
            (Error::PermissionDenied, Code::PermissionDenied),
            (Error::Auth, Code::Unavailable),
            (Error::Unavailable("down".into()), Code::Unavailable),
            (
                Error::DeadlineExceeded(std::time::Duration::from_millis(5)),
                Code::DeadlineExceeded,
            ),
            (Error::ReplyTooLarge(64), Code::ResourceExhausted),
            (Error::Internal("x".into()), Code::Internal),
            (Error::Logged(7), Code::Internal),
            (Error::Cancelled("body".into()), Code::Cancelled),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }
}
