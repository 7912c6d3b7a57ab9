//! One verified request: Host/SNI binding, header policy, the upstream call,
//! and the 421/502/504 answers.

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming};
use prometheus_client::metrics::counter::Counter;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    access,
    activity::{Activity, RequestGuard},
    body::{Watch, Watched},
    h1::request,
    headers::{self, Forwarding},
    lifecycle::Closing,
    metrics::HttpMetrics,
    upstream::{client_body, started, ClientBody, UpstreamClient, UpstreamError},
    websocket, Route, UpstreamProtocol,
};

pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// What a response body can fail with: hyper's errors from its client, and
/// the raw exchange's own (`raw`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who the client of a verified connection is, as the TLS layer found.
#[derive(Debug)]
pub struct Client {
    /// The SNI the client sent, lowercase.
    pub sni: String,
    /// The TCP peer (a Cloudflare edge address).
    pub peer: IpAddr,
    /// Hex SHA-256 of the verified leaf certificate.
    pub cert_sha256: String,
}

/// What a connection knows about its client after the handshake.
#[derive(Debug)]
pub struct Connection {
    pub(super) route: Arc<Route>,
    /// The SNI the client sent, lowercase.
    pub(super) sni: String,
    /// The TCP peer's address, formatted once for all requests.
    pub(super) peer_ip: HeaderValue,
    /// Hex SHA-256 of the verified leaf certificate, as sent upstream.
    pub(super) client_cert_sha256: HeaderValue,
    pub(super) activity: Arc<Activity>,
    pub(super) upstream: UpstreamClient,
    metrics: HttpMetrics,
    /// This site's count of 200 responses, looked up on the first one.
    ok_requests: OnceLock<Counter>,
    /// The WebSocket tunnel this connection turned into, if it did: the
    /// connection's task waits for it, so it stays counted as a connection.
    tunnel: Mutex<Option<JoinHandle<()>>>,
    /// Whether the connection is to close (see `Closing`); a tunnel ends
    /// only on shutdown, after the grace.
    shutdown: watch::Receiver<Closing>,
}

impl Connection {
    pub(super) fn new(
        route: Arc<Route>,
        client: Client,
        activity: Arc<Activity>,
        upstream: UpstreamClient,
        metrics: HttpMetrics,
        shutdown: watch::Receiver<Closing>,
    ) -> Connection {
        // Both are made once for all the connection's requests. An IP
        // address and hex digits always make valid header values.
        let peer_ip = HeaderValue::from_str(&client.peer.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let client_cert_sha256 = HeaderValue::from_str(&client.cert_sha256)
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Connection {
            route,
            sni: client.sni,
            peer_ip,
            client_cert_sha256,
            activity,
            upstream,
            metrics,
            ok_requests: OnceLock::new(),
            tunnel: Mutex::new(None),
            shutdown,
        }
    }

    /// Waits for the WebSocket tunnel, when the connection became one.
    pub(super) async fn tunnel_ended(&self) {
        let tunnel = self.tunnel.lock().ok().and_then(|mut tunnel| tunnel.take());
        if let Some(tunnel) = tunnel {
            let _ = tunnel.await;
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<GuardedBody>, Infallible> {
        let guard = self.activity.begin_request();
        let request_id = RequestId::random();
        let mut access = None;
        // Boxed: hyper's h2 server moves the service future into the
        // stream's task (and tokio into its cell); at 4 KB inline, those
        // copies were a sixth of an h2 request's instructions.
        let response = Box::pin(self.respond(request, request_id.as_str(), &mut access)).await;
        self.count(response.status());
        if let Some(pending) = access.as_mut() {
            pending.outcome.status = response.status().as_u16();
            pending.outcome.upstream = response.extensions().get::<UpstreamHead>().map(|u| u.0);
        }
        Ok(response.map(|body| {
            Watched::new(
                body,
                Served {
                    _guard: guard,
                    access,
                },
            )
        }))
    }

    /// The request's access-log line to be, with `[log].access` on (boxed:
    /// it waits in the response body).
    fn begin_access(&self, request: &Request<Incoming>, request_id: &str) -> Option<Box<Pending>> {
        access::enabled().then(|| {
            Box::new(Pending {
                head: access_head(request, request_id),
                outcome: access::Outcome::default(),
                route: self.route.clone(),
                client_cert_sha256: self.client_cert_sha256.clone(),
            })
        })
    }

    /// Counts a response in `shield_http_requests_total`.
    pub(super) fn count(&self, status: StatusCode) {
        match status {
            StatusCode::OK => {
                self.ok_requests
                    .get_or_init(|| self.metrics.request_counter(&self.route.label, 200))
                    .inc();
            }
            status => self.metrics.request(&self.route.label, status.as_u16()),
        }
    }

    /// [`Self::upstream_failed`] as hyper's path answers it.
    fn failure_answer(
        &self,
        failure: UpstreamFailure<'_>,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let (status, body) = self.upstream_failed(failure, request_id);
        text(status, body)
    }

    /// Logs why the upstream gave no answer; the status and body to send.
    pub(super) fn upstream_failed(
        &self,
        failure: UpstreamFailure<'_>,
        request_id: &str,
    ) -> (StatusCode, String) {
        match failure {
            UpstreamFailure::Error(error) => {
                tracing::warn!(site = %self.route.label, request_id, error = %error_chain(error), "502: upstream failed");
                (
                    StatusCode::BAD_GATEWAY,
                    format!("Bad Gateway: the upstream refused or failed (request {request_id})\n"),
                )
            }
            UpstreamFailure::Timeout => {
                tracing::warn!(
                    site = %self.route.label,
                    request_id,
                    timeout = ?self.route.upstream_timeout,
                    "504: upstream did not answer in time"
                );
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("Gateway Timeout: the upstream did not answer in time (request {request_id})\n"),
                )
            }
        }
    }

    /// The answer to `request`; `access` gets its access-log line to be,
    /// with `[log].access` on.
    async fn respond(
        &self,
        mut request: Request<Incoming>,
        request_id: &str,
        access: &mut Option<Box<Pending>>,
    ) -> Response<ProxyBody> {
        *access = self.begin_access(&request, request_id);
        // A tunnel to wherever the client names is not a request to the
        // site's application; Cloudflare sends none (nginx answers the same).
        if request.method() == Method::CONNECT {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed: CONNECT\n".into(),
            );
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return response;
        }
        // RFC 9112 3.2: more than one Host field is a 400, whatever they say.
        if request
            .headers()
            .get_all(header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            return text(
                StatusCode::BAD_REQUEST,
                "Bad Request: more than one Host\n".into(),
            );
        }
        let host = match headers::request_host(request.uri(), request.headers()) {
            Some(host) if host == self.sni && self.route.serves(&host) => host,
            other => {
                tracing::info!(
                    site = %self.route.label,
                    sni = %self.sni,
                    host = ?other,
                    request_id,
                    "421: Host does not match the TLS server name"
                );
                return text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "Misdirected Request: the Host does not match the TLS server name\n".into(),
                );
            }
        };
        let upgrade = if websocket::asked(&request) {
            if !self.route.websockets {
                tracing::info!(site = %self.route.label, request_id, "403: WebSocket upgrade to a site with websockets = false");
                return text(
                    StatusCode::FORBIDDEN,
                    "Forbidden: this site does not accept WebSocket upgrades\n".into(),
                );
            }
            Some(hyper::upgrade::on(&mut request))
        } else {
            None
        };
        let (mut parts, body) = request.into_parts();
        parts.uri = match self
            .route
            .upstream
            .target_for(&parts.method, parts.uri.path_and_query())
        {
            Some(uri) => uri,
            None => return text(StatusCode::BAD_REQUEST, "Bad Request\n".into()),
        };
        let h2c = self.route.upstream.protocol() == UpstreamProtocol::H2c;
        // An h2 stream's GET or HEAD without a body: the raw exchange.
        // (HTTP/1.1 ones took the direct path already, or were deferred
        // from it for a reason hyper's client is the one to handle.)
        if !h2c
            && upgrade.is_none()
            && parts.version == Version::HTTP_2
            && body.is_end_stream()
            && matches!(parts.method, Method::GET | Method::HEAD)
        {
            let mut head = Vec::with_capacity(512);
            if request::write_parsed_head(
                &parts.method,
                &parts.uri,
                &parts.headers,
                &host,
                self.context(),
                request_id,
                &mut head,
            ) {
                return self
                    .respond_raw(&head, parts.method == Method::HEAD, request_id)
                    .await;
            }
        }
        let trailers = h2c && headers::accepts_trailers(&parts.headers);
        headers::prepare_request(
            &mut parts.headers,
            &Forwarding {
                host: &host,
                peer_ip: &self.peer_ip,
                client_cert_sha256: &self.client_cert_sha256,
                request_id,
            },
        );
        if h2c {
            // The site's name goes as `:authority`, where HTTP/1.1 has Host.
            parts.headers.remove(header::HOST);
            parts.uri = match absolute(&host, &parts.uri) {
                Some(uri) => uri,
                None => return text(StatusCode::BAD_REQUEST, "Bad Request\n".into()),
            };
            parts.version = Version::HTTP_2;
            if trailers {
                parts
                    .headers
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
        } else {
            // The upstream speaks HTTP/1.1 whatever the client spoke to us.
            parts.version = Version::HTTP_11;
        }
        // Boxed: larger than the raw exchange every h2 GET takes, whose
        // state is what each stream's task carries (see `handle`).
        Box::pin(self.call_upstream(parts, body, upgrade, h2c, request_id)).await
    }

    /// The request, its header policy applied, to the upstream through
    /// hyper's client (h1 or h2c), or as a WebSocket handshake.
    async fn call_upstream(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        h2c: bool,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let (body, broken_by_client) = client_body(body);
        if let Some(client) = upgrade.filter(|_| !h2c) {
            websocket::set_upgrade_fields(&mut parts.headers);
            return self
                .respond_upgrade(Request::from_parts(parts, body), client, request_id)
                .await;
        }
        let (authority, request) = (
            self.route.upstream.authority(),
            Request::from_parts(parts, body),
        );
        let sent = Instant::now();
        let call = async {
            if h2c {
                self.upstream.request_h2c(authority, request).await
            } else {
                self.upstream.request(authority, request).await
            }
        };
        match tokio::time::timeout(self.route.upstream_timeout, call).await {
            // No upgrade was asked for (hyper's path forwards none), so
            // the upstream cannot switch protocols: the direct path refuses
            // the same.
            Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let error = UpstreamError::Malformed(
                    "101 Switching Protocols to a request without Upgrade",
                );
                self.failure_answer(UpstreamFailure::Error(&error), request_id)
            }
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                self.answer_started(parts, body, request_id, sent).await
            }
            Ok(Err(_)) if broken_by_client.get() => {
                tracing::info!(site = %self.route.label, request_id, "400: the client's request body is malformed");
                text(
                    StatusCode::BAD_REQUEST,
                    format!("Bad Request: malformed request body (request {request_id})\n"),
                )
            }
            Ok(Err(error)) => self.failure_answer(UpstreamFailure::Error(&error), request_id),
            Err(_) => self.failure_answer(UpstreamFailure::Timeout, request_id),
        }
    }
}

impl Connection {
    /// [`UpstreamClient::request_raw`] of `head`, and its answer.
    async fn respond_raw(
        &self,
        head: &[u8],
        head_request: bool,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let sent = Instant::now();
        let call = self
            .upstream
            .request_raw(self.route.upstream.authority(), head, head_request);
        match tokio::time::timeout(self.route.upstream_timeout, call).await {
            Ok(Ok(response)) => {
                let (parts, body) = response.into_parts();
                self.answer_started(parts, body, request_id, sent).await
            }
            Ok(Err(error)) => self.failure_answer(UpstreamFailure::Error(&error), request_id),
            Err(_) => self.failure_answer(UpstreamFailure::Timeout, request_id),
        }
    }

    /// A WebSocket handshake: the upstream's 101 goes back to the client and
    /// the tunnel starts; any other answer is passed on as it is.
    async fn respond_upgrade(
        &self,
        request: Request<ClientBody>,
        client: hyper::upgrade::OnUpgrade,
        request_id: &str,
    ) -> Response<ProxyBody> {
        let sent = Instant::now();
        let call = self
            .upstream
            .upgrade(self.route.upstream.authority(), request);
        let mut response = match tokio::time::timeout(self.route.upstream_timeout, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                return self.failure_answer(UpstreamFailure::Error(&error), request_id);
            }
            Err(_) => {
                return self.failure_answer(UpstreamFailure::Timeout, request_id);
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS && !websocket::accepted(&response) {
            let error = UpstreamError::Malformed("101 Switching Protocols to other than websocket");
            return self.failure_answer(UpstreamFailure::Error(&error), request_id);
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut response);
            let tunnel = tokio::spawn(websocket::tunnel(
                client,
                upstream,
                self.route.idle_timeout,
                self.metrics.upgrades_active(&self.route.label),
                self.shutdown.clone(),
                self.route.label.clone(),
            ));
            if let Ok(mut slot) = self.tunnel.lock() {
                *slot = Some(tunnel);
            }
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            websocket::set_upgrade_fields(&mut parts.headers);
        }
        note_upstream_head(&mut parts, sent);
        Response::from_parts(parts, proxy_body(body))
    }

    /// The upstream's answer with `body` once its first frame is in (see
    /// `started`), or a 502 when that frame is broken.
    async fn answer_started<B>(
        &self,
        mut parts: http::response::Parts,
        body: B,
        request_id: &str,
        sent: Instant,
    ) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        note_upstream_head(&mut parts, sent);
        match started(body).await {
            Ok(body) => Response::from_parts(parts, proxy_body(body)),
            Err(error) => self.failure_answer(UpstreamFailure::Error(&error), request_id),
        }
    }
}

/// Any upstream body as the one type hyper's server is given.
fn proxy_body<B>(body: B) -> ProxyBody
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// `http://HOST` and the origin-form `target`: an HTTP/2 request's
/// `:scheme`, `:authority` and `:path`.
fn absolute(host: &str, target: &http::Uri) -> Option<http::Uri> {
    http::Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(target.path_and_query()?.clone())
        .build()
        .ok()
}

/// Why a request got no upstream answer.
pub(super) enum UpstreamFailure<'a> {
    /// 502.
    Error(&'a (dyn std::error::Error + Send + Sync + 'static)),
    /// 504: no response head within `upstream_timeout`.
    Timeout,
}

/// 16 lowercase hex digits of a random number; `format!` costs more than
/// the rest of the id.
pub(super) struct RequestId([u8; 16]);

impl RequestId {
    pub(super) fn random() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = rand::random::<u64>();
        let mut id = [0; 16];
        for (i, digit) in id.iter_mut().enumerate() {
            *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestId(id)
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A short plain-text answer generated by shield.
pub fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response body that keeps its request counted as in flight until
/// sent (the guard is dropped with it), and writes its access-log line then.
pub type GuardedBody = Watched<ProxyBody, Served>;

/// How long the upstream took to its response head, on a response that
/// came from it (for the access log).
#[derive(Debug, Clone, Copy)]
struct UpstreamHead(Duration);

/// Notes on the response how long the upstream took to its head, for the
/// access log only: an extension is two allocations, a clock read another
/// cost, on every request.
fn note_upstream_head(parts: &mut http::response::Parts, sent: Instant) {
    if access::enabled() {
        parts.extensions.insert(UpstreamHead(sent.elapsed()));
    }
}

/// What a response body carries until it is sent.
pub struct Served {
    /// Counts the request in flight until the body is dropped.
    _guard: RequestGuard,
    /// With `[log].access` on.
    access: Option<Box<Pending>>,
}

/// A request's access-log line, waiting for its response to be sent.
struct Pending {
    head: access::Head,
    outcome: access::Outcome,
    route: Arc<Route>,
    client_cert_sha256: HeaderValue,
}

impl Watch<BoxError> for Served {
    fn polled(&mut self, frame: Option<&Result<Frame<Bytes>, BoxError>>, _ended: bool) {
        if let (Some(pending), Some(Ok(frame))) = (self.access.as_mut(), frame) {
            if let Some(data) = frame.data_ref() {
                pending.outcome.bytes_sent += data.len() as u64;
            }
        }
    }

    fn dropped(&mut self, _ended: bool) {
        if let Some(pending) = self.access.take() {
            access::log(
                &pending.head,
                &pending.route.label,
                pending.client_cert_sha256.to_str().unwrap_or_default(),
                pending.outcome,
            );
        }
    }
}

/// The access log's view of a request head that hyper parsed.
fn access_head<B>(request: &Request<B>, request_id: &str) -> access::Head {
    let protocol = match request.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let field = |name: &str| request.headers().get(name).map(HeaderValue::as_bytes);
    access::Head::new(
        request.method().as_str(),
        request.uri().path(),
        protocol,
        field("cf-connecting-ip"),
        field("cf-ray"),
        request_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, Fut: std::future::Future>(_: impl Fn(A, B) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// hyper's h2 server and tokio copy the service future per stream:
    /// it stays small, the work boxed behind it.
    #[test]
    fn the_service_future_stays_small() {
        let size = future_size(Connection::handle);
        assert!(size <= 512, "Connection::handle's future is {size} bytes");
    }

    #[test]
    fn request_ids_are_16_hex_digits() {
        let id = RequestId::random();
        assert_eq!(id.as_str().len(), 16);
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id.as_str(), RequestId::random().as_str());
    }
}
