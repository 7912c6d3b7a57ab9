//! `/metrics` on `[metrics].listen`: the prometheus-client registry as
//! OpenMetrics text. XDP counters are read from the pinned per-CPU maps at
//! scrape time (summed over CPUs), never polled, so a scrape always sees
//! what the kernel counted, also across daemon restarts.

use std::{convert::Infallible, fmt, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, header, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::dataplane::{self, PinLayout};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// `[metrics].listen` cannot be bound (in use, not a local address).
    #[error("cannot listen for metrics on {listen} (change [metrics].listen)")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct XdpLabels {
    interface: String,
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttachedLabels {
    interface: String,
    mode: &'static str,
}

/// Reads every pinned interface's counters when Prometheus scrapes.
#[derive(Debug)]
pub struct XdpCollector {
    layout: PinLayout,
}

impl XdpCollector {
    pub fn new(layout: PinLayout) -> Self {
        XdpCollector { layout }
    }
}

impl Collector for XdpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let interfaces = match dataplane::status(&self.layout) {
            Ok(interfaces) => interfaces,
            Err(error) => {
                tracing::warn!(error = %crate::error::Chain(&error), "metrics: cannot read the XDP counters");
                return Ok(());
            }
        };
        type Field = fn(&shield_common::Counter) -> u64;
        let counters: [(&str, &str, Field); 2] = [
            (
                "shield_xdp_packets",
                "Packets the XDP program judged, by verdict and reason",
                |c| c.packets,
            ),
            (
                "shield_xdp_bytes",
                "Bytes of the packets the XDP program judged, by verdict and reason",
                |c| c.bytes,
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for interface in &interfaces {
                for (verdict, reason, counter) in interface.counters.iter() {
                    let labels = XdpLabels {
                        interface: interface.interface.clone(),
                        verdict: verdict.name(),
                        reason: reason.name(),
                    };
                    ConstCounter::new(field(&counter)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "shield_xdp_attached",
            "1 when the XDP program is attached to the interface, in the mode labelled",
            None,
            MetricType::Gauge,
        )?;
        for interface in &interfaces {
            let labels = AttachedLabels {
                interface: interface.interface.clone(),
                mode: interface.mode.unwrap_or("unknown"),
            };
            ConstGauge::new(i64::from(interface.attached))
                .encode(family.encode_family(&labels)?)?;
        }
        if let Some(active) = dataplane::syn_cookies_active(&self.layout) {
            let family = encoder.encode_descriptor(
                "shield_xdp_syn_cookies_active",
                "1 when SYNs from inside the ranges are answered with XDP SYN cookies while the kernel would use cookies; 0 when they all go to the kernel (syn_cookies = \"off\", monitor mode, or net.ipv4.tcp_syncookies = 0)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(active)).encode(family)?;
        }
        Ok(())
    }
}

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

fn respond(registry: &Registry, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status, content_type, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = header::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "shield serves /metrics\n".into(),
        );
    }
    match render(registry) {
        Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "cannot encode metrics\n".into(),
        ),
    }
}

/// Binds `listen` and serves `/metrics` on the current runtime until the
/// returned task is aborted.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind { listen, source })?;
    tracing::info!(%listen, "serving /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    continue;
                }
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = respond(&registry, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(error = %crate::error::Chain(&error), "metrics connection ended");
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::tests::count_in_chain;

    #[test]
    fn a_bind_failure_names_its_cause_once() {
        let source = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let cause = source.to_string();
        let error = MetricsError::Bind {
            listen: "192.0.2.1:9469".parse().unwrap(),
            source,
        };
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");
        assert!(text.contains("[metrics].listen"), "{text}");
    }
}
