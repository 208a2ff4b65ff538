//! Prism's plugin interfaces, served on the cache's port so a Prism proxy
//! can drive the plugin unchanged (the wire facts are in `proto/prism/`).
//!
//! - [`keyvalue`]: `KeyValueBasicInterface`, `KeyValueBatchInterface` and
//!   `KeyValueTTLInterface` as an adapter over the in-process
//!   [`crate::service::CacheService`]: the same validation, limits, prefix,
//!   deadlines, metrics and backend; errors go in the reply body.
//! - [`lifecycle`]: `LifecycleInterface` — Initialize checks a config
//!   against the plugin's schema, Start names the endpoint, Drain closes the
//!   [`crate::drain::Gate`], Stop asks the server to shut down, HealthCheck
//!   mirrors the health prober.
//!
//! Admission (permits, byte budgets, refusing data calls while draining) is
//! not here: it happens before these handlers, in `admission`.

pub mod keyvalue;
pub mod lifecycle;

pub use keyvalue::KeyValue;
pub use lifecycle::Lifecycle;
