//! Where the daemon's log and the access log go: one bounded writer to
//! stderr (the journal under systemd) that never blocks the thread that
//! logs. A slow or stopped reader costs lines, counted in
//! `shield_log_dropped_lines_total`, never a worker stalled in `write`.

use std::{fmt, io::Write as _, sync::OnceLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, MetricType},
};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    filter::{filter_fn, EnvFilter, FilterExt as _},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
    Layer as _,
};

use crate::config::LogFormat;

/// The access log's target: `SHIELD_LOG` filters the daemon's own log, not
/// these lines, which `[log].access` turns on and off.
pub const ACCESS_TARGET: &str = "shield::access";

/// Lines held for a slow reader before new ones are dropped: some
/// seconds of a busy origin's access log, a few MiB.
const BUFFERED_LINES: usize = 16_384;

/// The writer behind both logs, for the access log's lines.
static WRITER: OnceLock<(NonBlocking, LogFormat)> = OnceLock::new();

/// Lines the daemon's writer dropped.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer's thread; dropping it flushes what is buffered.
pub struct Logging {
    _guard: WorkerGuard,
}

/// The count of lines the daemon's writer dropped, as a metric; `None`
/// before [`init_for_daemon`] (a test's in-process daemon).
pub fn dropped_lines() -> Option<DroppedLines> {
    DROPPED.get().cloned().map(DroppedLines)
}

/// Logging for a command run by hand: plain lines, written as they come.
pub fn init_for_command() {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Logging for the daemon, in `format`, through the non-blocking writer.
pub fn init_for_daemon(format: LogFormat) -> Logging {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("shield-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let _ = WRITER.set((writer.clone(), format));
    let own = filter_fn(|metadata| metadata.target() != ACCESS_TARGET);
    // Colour codes only for a terminal; journald and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_filter(env_filter().and(own))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(env_filter().and(own))
            .boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
    Logging { _guard: guard }
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_env("SHIELD_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Writes one access-log line (which ends in a newline) without waiting;
/// false when there is no daemon writer (a command, a test).
pub(crate) fn write_access_line(line: &[u8]) -> bool {
    match WRITER.get() {
        Some((writer, _)) => {
            // One `write` is one line in the writer's queue; a full queue
            // drops it and counts it.
            let _ = writer.clone().write_all(line);
            true
        }
        None => false,
    }
}

/// The format the daemon writes in (text before the daemon set it up).
pub(crate) fn format() -> LogFormat {
    WRITER.get().map_or(LogFormat::Text, |(_, format)| *format)
}

/// `shield_log_dropped_lines_total`, read at scrape time.
#[derive(Debug)]
pub struct DroppedLines(ErrorCounter);

impl Collector for DroppedLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let metric = encoder.encode_descriptor(
            "shield_log_dropped_lines",
            "Log and access-log lines dropped because stderr (the journal) was not keeping up",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.dropped_lines() as u64).encode(metric)
    }
}
