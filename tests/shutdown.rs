//! Shutdown order, seen from a client: health says NOT_SERVING first, then
//! the port drains. (SIGTERM with a call in flight: tests/server.rs.)

mod common;

use std::time::Duration;

use common::{Plugin, memory_config, test_prefix};
use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test]
async fn health_watchers_hear_not_serving_before_the_drain_ends() {
    let plugin = Plugin::start(memory_config(&test_prefix("shutdown-order"))).await;
    let mut health = HealthClient::new(plugin.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut status = watch.next().await.expect("first status").expect("ok");
    // The prober may not have answered yet; the first SERVING comes fast.
    while status.status != SERVING {
        status = tokio::time::timeout(Duration::from_secs(2), watch.next())
            .await
            .expect("SERVING within 2 s")
            .expect("stream open")
            .expect("ok");
    }

    let stopping = tokio::spawn(plugin.stop());
    // The open watch stream keeps the drain waiting (drain_timeout is 5 s
    // in the test config): NOT_SERVING must come well before that, while
    // the connection still serves.
    let next = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("a status within 2 s of shutdown")
        .expect("stream still open")
        .expect("ok");
    assert_eq!(next.status, NOT_SERVING, "first status after shutdown");
    assert!(
        !stopping.is_finished(),
        "the drain waits for the open stream"
    );

    drop(watch);
    drop(health);
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("drain ends once the last stream has gone")
        .expect("join");
}
