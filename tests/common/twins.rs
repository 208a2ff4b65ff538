//! Tests written once and instantiated per backend: `backend_tests!` makes
//! one module per backend (`redis::name`, `valkey::name`, ...) with one
//! `#[tokio::test]` per named test function, so a Redis/Valkey pair is never
//! written twice by hand. Which backends and how a test is run are the
//! caller's; what the tests check is in the test functions.

/// Instantiates `tests` once per backend.
///
/// ```ignore
/// backend_tests! {
///     backends { redis => Flavor::Redis, valkey => Flavor::Valkey }
///     run |flavor, test, _name| { test(flavor).await }
///     tests { key_outside_acl_pattern_is_permission_denied }
/// }
/// ```
/// In `run`, the first name is bound to the backend's value, the second to
/// the test function and the third to the test's name as a `&str`.
#[macro_export]
macro_rules! backend_tests {
    (
        backends { $($module:ident => $backend:expr),+ $(,)? }
        run |$arg:ident, $test:ident, $name:ident| $body:block
        tests $tests:tt
    ) => {
        $(
            $crate::backend_tests!(@module $module, $backend, |$arg, $test, $name| $body, $tests);
        )+
    };
    (@module $module:ident, $backend:expr, |$arg:ident, $test:ident, $name:ident| $body:block,
     { $($fn_name:ident),+ $(,)? }) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $fn_name() {
                    let $arg = $backend;
                    let $test = super::$fn_name;
                    let $name: &str = stringify!($fn_name);
                    $body
                }
            )+
        }
    };
}

/// Instantiates `tests` (each an `async fn(Flavor)`) on Redis and Valkey.
#[macro_export]
macro_rules! twin_tests {
    ($($fn_name:ident),+ $(,)?) => {
        $crate::backend_tests! {
            backends {
                redis => $crate::common::Flavor::Redis,
                valkey => $crate::common::Flavor::Valkey,
            }
            run |flavor, test, _name| { test(flavor).await }
            tests { $($fn_name),+ }
        }
    };
}

/// Like [`twin_tests!`] on a multi-thread runtime (two workers), for tests
/// that run plugins in-process and make blocking calls to Redis (admin
/// commands, restarts) while the plugins keep working.
#[macro_export]
macro_rules! twin_tests_threaded {
    ($($fn_name:ident),+ $(,)?) => {
        $crate::twin_tests_threaded!(@module redis, $crate::common::Flavor::Redis, $($fn_name),+);
        $crate::twin_tests_threaded!(@module valkey, $crate::common::Flavor::Valkey, $($fn_name),+);
    };
    (@module $module:ident, $flavor:expr, $($fn_name:ident),+) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $fn_name() {
                    super::$fn_name($flavor).await
                }
            )+
        }
    };
}
