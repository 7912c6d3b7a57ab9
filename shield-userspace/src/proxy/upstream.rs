//! The pooled HTTP client to the sites' upstreams.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

/// A refused or unreachable upstream fails fast as a 502; this bounds only
/// the TCP connect, the answer itself is bounded by `upstream_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One pool per connection worker (`tls::workers`), for all sites: hyper
/// keys it by scheme and authority, so sites sharing an upstream share its
/// connections, and a reload keeps them. Per worker, so a request and the
/// upstream connection it borrows stay on one thread.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

pub fn client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}
