//! The `kurrentdb-emulator` binary, run as a process.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kurrentdb::{
    Client, ClientSettings, EventData, PersistentSubscriptionEvent, PersistentSubscriptionOptions,
    StreamPosition,
};
use serde_json::json;

/// A free loopback port (free when this returns, which is enough here).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts the binary on `addr` over `dir` and waits until it accepts.
fn spawn(addr: SocketAddr, dir: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_kurrentdb-emulator"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the binary never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Stops the process with SIGTERM, as an operator would.
fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

fn client(addr: SocketAddr) -> Client {
    let settings: ClientSettings = format!("kurrentdb://{addr}?tls=false").parse().unwrap();
    Client::new(settings).unwrap()
}

/// With `--data-dir`, streams, groups and checkpoints outlive the
/// process: a restarted binary resumes the group after its checkpoint.
#[tokio::test]
async fn the_binary_keeps_its_store_in_the_data_directory() {
    let dir = std::env::temp_dir().join(format!("emulator-bin-{}", uuid::Uuid::new_v4()));
    let addr = free_addr();
    let child = spawn(addr, &dir);
    let first = client(addr);
    let events: Vec<_> = (0..3)
        .map(|n| EventData::json("OrderPlaced", &json!({ "n": n })).unwrap())
        .collect();
    first
        .append_to_stream("order-1", &Default::default(), events)
        .await
        .unwrap();
    let options = PersistentSubscriptionOptions::default()
        .start_from(StreamPosition::Start)
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1);
    first
        .create_persistent_subscription("order-1", "g", &options)
        .await
        .unwrap();
    let mut sub = first
        .subscribe_to_persistent_subscription("order-1", "g", &Default::default())
        .await
        .unwrap();
    let event = sub.next().await.unwrap();
    sub.ack(&event).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = first
            .get_persistent_subscription_info("order-1", "g", &Default::default())
            .await
            .unwrap();
        if info.stats.last_checkpointed_event_revision == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(child);

    let child = spawn(addr, &dir);
    let again = client(addr);
    let mut sub = again
        .subscribe_to_persistent_subscription("order-1", "g", &Default::default())
        .await
        .unwrap();
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let next = sub.next_subscription_event().await.unwrap();
            if let PersistentSubscriptionEvent::EventAppeared { event, .. } = next {
                return event.get_original_event().revision;
            }
        }
    });
    assert_eq!(resumed.await.expect("an event in time"), 1);
    terminate(child);
    std::fs::remove_dir_all(&dir).unwrap();
}
