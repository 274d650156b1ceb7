//! The listener: plain HTTP/2 (no TLS) serving the gRPC services, the 1 s
//! timer that drives message timeouts and checkpoints, and the ways a test
//! can make the server go away (drop every connection, or stop).
//!
//! Connections are served one task each with hyper directly (rather than
//! through tonic's server builder) so the emulator can close them on
//! demand while it keeps listening.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codegen::Service;
use tonic::service::Routes;

use crate::features::FeaturesService;
use crate::persistent::service::PersistentService;
use crate::proto::features::server_features_server::ServerFeaturesServer;
use crate::proto::persistent::persistent_subscriptions_server::PersistentSubscriptionsServer;
use crate::proto::streams::streams_server::StreamsServer;
use crate::store::Store;
use crate::streams::StreamsService;

/// How often timeouts and checkpoints are checked, as upstream.
const TICK: Duration = Duration::from_secs(1);

/// How long a closing connection may take to flush its last answers. A
/// client keeps its side of a subscription open, so a graceful close would
/// otherwise wait for it; after this the connection is cut.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The peer address, put in each request's extensions for GetInfo.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// A served connection: how to ask it to close, and its task.
struct Connection {
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    open: HashMap<u64, Connection>,
}

type SharedConnections = Arc<Mutex<Connections>>;

/// A running emulator.
pub struct Server {
    addr: SocketAddr,
    store: Store,
    accept: JoinHandle<()>,
    ticker: JoinHandle<()>,
    connections: SharedConnections,
}

impl Server {
    /// Starts serving `store` on `addr` (`127.0.0.1:0` picks a port).
    /// Groups already in the store reload from their checkpoints, as after
    /// a server restart.
    pub async fn start(addr: SocketAddr, store: Store) -> std::io::Result<Server> {
        Self::start_with_users(addr, store, &[]).await
    }

    /// As [`Server::start`], but every call except the server-features
    /// query must carry Basic credentials of one of `users` (name,
    /// password), as on a secure server; others are refused with
    /// `Unauthenticated`. No users means no authentication. There are no
    /// ACLs: an authenticated user may do everything.
    pub async fn start_with_users(
        addr: SocketAddr,
        store: Store,
        users: &[(String, String)],
    ) -> std::io::Result<Server> {
        let credentials = Credentials::of(users);
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        {
            let mut state = store.lock();
            let state = &mut *state;
            state.groups.restart(&state.log);
        }

        let routes = Routes::new(ServerFeaturesServer::new(FeaturesService))
            .add_service(StreamsServer::new(StreamsService::new(store.clone())))
            .add_service(PersistentSubscriptionsServer::new(PersistentService::new(
                store.clone(),
            )))
            .prepare();
        let connections = SharedConnections::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            routes,
            connections.clone(),
            credentials,
        ));
        let ticker = tokio::spawn(tick_loop(store.clone()));
        tracing::info!(%addr, "emulator listening");
        Ok(Server {
            addr,
            store,
            accept,
            ticker,
            connections,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string for the official client.
    pub fn connection_string(&self) -> String {
        format!("kurrentdb://{}?tls=false", self.addr)
    }

    /// The store it serves.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Ends every subscription (Cancelled, `persistent-subscription-dropped`)
    /// and closes every connection, but keeps listening.
    pub async fn drop_connections(&self) {
        self.store.lock().groups.drop_all();
        close_all(&self.connections).await;
        tracing::info!("all connections dropped");
    }

    /// Fault injection, not real-server behaviour: ends every subscription
    /// call with an OK status and no error, as a faulty proxy or server
    /// could. The official client cannot handle that (it panics reading the
    /// next message), so clients must survive it.
    pub async fn end_subscriptions_cleanly(&self) {
        self.store.lock().groups.end_all_cleanly();
        tracing::info!("all subscriptions ended cleanly (fault injection)");
    }

    /// Stops listening and ends every subscription and connection.
    /// Starting a new server on the same address and store afterwards is
    /// a server restart as clients see it.
    pub async fn stop(mut self) {
        // Wait for the accept task so the port is free when this returns.
        self.accept.abort();
        let _ = (&mut self.accept).await;
        self.ticker.abort();
        self.store.lock().groups.drop_all();
        close_all(&self.connections).await;
        tracing::info!(addr = %self.addr, "emulator stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // `stop` consumed the handles already if it ran; this covers a
        // server dropped without stopping.
        self.accept.abort();
        self.ticker.abort();
        let mut connections = lock(&self.connections);
        for (_, connection) in connections.open.drain() {
            connection.task.abort();
        }
    }
}

fn lock(connections: &SharedConnections) -> std::sync::MutexGuard<'_, Connections> {
    connections.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks every connection to close gracefully, then aborts stragglers.
async fn close_all(connections: &SharedConnections) {
    let open: Vec<Connection> = lock(connections).open.drain().map(|(_, c)| c).collect();
    let mut tasks = Vec::with_capacity(open.len());
    for connection in open {
        let _ = connection.close.send(());
        tasks.push(connection.task);
    }
    for mut task in tasks {
        if tokio::time::timeout(CLOSE_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    routes: Routes,
    connections: SharedConnections,
    credentials: Credentials,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => serve(
                stream,
                peer,
                routes.clone(),
                &connections,
                credentials.clone(),
            ),
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection in its own task, registered so it can be closed.
fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    routes: Routes,
    connections: &SharedConnections,
    credentials: Credentials,
) {
    let _ = stream.set_nodelay(true);
    tracing::info!(%peer, "connection opened");
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(Peer(peer));
        let refused = !credentials.admit(&request);
        let mut routes = routes.clone();
        async move {
            if refused {
                tracing::info!(%peer, path = %request.uri().path(), "unauthenticated call refused");
                let status = tonic::Status::unauthenticated("Bad username or password");
                return Ok(status.into_http());
            }
            routes.call(request).await
        }
    });
    let (close, closed) = oneshot::channel();

    let mut guard = lock(connections);
    guard.next_id += 1;
    let id = guard.next_id;
    let registry = connections.clone();
    let task = tokio::spawn(async move {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended");
                }
            }
            _ = closed => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
        lock(&registry).open.remove(&id);
        tracing::info!(%peer, "connection closed");
    });
    guard.open.insert(id, Connection { close, task });
}

/// The accepted `authorization` header values; empty when the server
/// needs none.
#[derive(Clone, Default)]
struct Credentials(Arc<Vec<String>>);

impl Credentials {
    fn of(users: &[(String, String)]) -> Credentials {
        use base64::Engine;
        let encode = |(name, password): &(String, String)| {
            let pair = format!("{name}:{password}");
            let token = base64::engine::general_purpose::STANDARD.encode(pair);
            format!("Basic {token}")
        };
        Credentials(Arc::new(users.iter().map(encode).collect()))
    }

    /// Whether a request may proceed. The server-features query is open to
    /// everyone, as the client asks it before it authenticates anything.
    fn admit<B>(&self, request: &hyper::Request<B>) -> bool {
        if self.0.is_empty() || request.uri().path().contains("ServerFeatures") {
            return true;
        }
        let header = request.headers().get("authorization");
        let given = header.and_then(|h| h.to_str().ok()).unwrap_or("");
        self.0.iter().any(|accepted| accepted == given)
    }
}

async fn tick_loop(store: Store) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let mut state = store.lock();
        let state = &mut *state;
        state.groups.tick(&mut state.log, Instant::now());
    }
}
