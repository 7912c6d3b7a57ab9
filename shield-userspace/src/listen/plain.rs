//! Port 80: redirect to https, or refuse with 403.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::{
    body::{Body as _, Incoming},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{io::AsyncWriteExt as _, net::TcpListener, sync::Semaphore};

use crate::{
    config::{HttpAction, NO_SITE},
    proxy::{self, headers, metrics::HttpMetrics, text, ProxyBody, Route, MAX_HEADER_BYTES},
};

/// Plain-HTTP connections open at once; port 80 only ever answers with a
/// redirect or a refusal, so it needs few.
const MAX_CONNECTIONS: usize = 4096;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What port 80 answers, rebuilt on every reload.
#[derive(Debug)]
pub struct PlainRoutes {
    pub action: HttpAction,
    /// Route and the TLS port it is served on, by server name.
    by_name: HashMap<String, (Arc<Route>, u16)>,
}

impl PlainRoutes {
    pub fn new(action: HttpAction, routes: impl IntoIterator<Item = (Arc<Route>, u16)>) -> Self {
        let mut by_name = HashMap::new();
        for (route, https_port) in routes {
            for name in &route.names {
                by_name.insert(name.clone(), (route.clone(), https_port));
            }
        }
        PlainRoutes { action, by_name }
    }

    fn respond(&self, request: &Request<Incoming>) -> (String, Response<ProxyBody>) {
        let route = headers::request_host(request.uri(), request.headers())
            .and_then(|host| self.by_name.get(&host).map(|route| (host, route)));
        let Some((host, (route, https_port))) = route else {
            // Redirecting an arbitrary Host would make us an open redirector.
            return (
                NO_SITE.to_owned(),
                text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "Misdirected Request: unknown host\n".into(),
                ),
            );
        };
        let response = match self.action {
            HttpAction::Redirect => {
                let port = match https_port {
                    443 => String::new(),
                    port => format!(":{port}"),
                };
                let path = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let location = format!("https://{host}{port}{path}");
                let mut response = text(StatusCode::MOVED_PERMANENTLY, format!("{location}\n"));
                match HeaderValue::from_str(&location) {
                    Ok(value) => {
                        response.headers_mut().insert(header::LOCATION, value);
                        response
                    }
                    Err(_) => text(StatusCode::BAD_REQUEST, "Bad Request\n".into()),
                }
            }
            HttpAction::Deny | HttpAction::Off => text(
                StatusCode::FORBIDDEN,
                "Forbidden: this site is served over https only\n".into(),
            ),
        };
        (route.label.clone(), response)
    }
}

/// Accepts on `listener` until the task is aborted.
pub async fn run(listener: TcpListener, routes: Arc<ArcSwap<PlainRoutes>>, metrics: HttpMetrics) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "port 80: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Whether the request came with a body that nothing here reads.
            let unread = Arc::new(AtomicBool::new(false));
            let seen = unread.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                if !request.body().is_end_stream() {
                    seen.store(true, Relaxed);
                }
                let (site, response) = routes.load().respond(&request);
                metrics.request(&site, response.status().as_u16());
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let mut connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            let result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await;
            let refused = match result {
                Ok(()) => false,
                Err(error) => {
                    tracing::debug!(error = %crate::error::Chain(&error), "port 80 connection ended with an error");
                    true
                }
            };
            let mut tcp = connection.into_parts().io.into_inner();
            // A client still sending a body (or a head hyper refused) when
            // the answer went out reads it only if the close waits for it,
            // as on the TLS side; any other closes at once.
            if refused || unread.load(Relaxed) {
                proxy::linger(&mut tcp).await;
            } else {
                let _ = tcp.shutdown().await;
            }
            drop(permit);
        });
    }
}
