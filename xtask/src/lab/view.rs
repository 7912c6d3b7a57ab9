//! The lab's live view: per second, what the edge's legitimate requests
//! got (rate, failures, latency as the client measured it) beside what the
//! XDP program did with the floods, with a sparkline of history for each.
//! Interactive on a terminal; otherwise one line per second and, at the
//! end, the last screen as text (what `cargo xtask test` prints).

use std::{collections::BTreeMap, collections::VecDeque, io::Read as _, path::PathBuf};

use ratatui::{
    backend::TestBackend,
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Sparkline},
    Frame, Terminal,
};

/// Seconds of history each sparkline keeps.
const HISTORY: usize = 180;

/// One row of the view: the series the lab shows, in order, as
/// (title, key in [`Second::rates`], colour).
const SERIES: [(&str, &str, Color); 7] = [
    ("drop outside_ranges/s", "drop:outside_ranges", Color::Red),
    (
        "answered syn_cookie/s",
        "answered:syn_cookie",
        Color::Yellow,
    ),
    ("drop udp_from_ranges/s", "drop:udp_from_ranges", Color::Red),
    ("drop bad_ack/s", "drop:bad_ack", Color::Red),
    ("pass allowed/s", "pass:allowed", Color::Green),
    ("refused handshakes/s", "handshakes_refused", Color::Magenta),
    (
        "pass unprotected/s (port 22)",
        "pass:unprotected",
        Color::Blue,
    ),
];

/// What the edge's request loop wrote: one `CODE SECONDS` line per
/// request (curl's `-w '%{http_code} %{time_total}\n'`), read as it grows.
pub struct EdgeLog {
    path: PathBuf,
    offset: u64,
    partial: String,
}

/// The edge's requests of one interval.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    pub failed: usize,
    /// Latency of the successful ones, milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
}

impl Requests {
    /// The successful ones (each has its latency).
    pub fn ok(&self) -> usize {
        self.latencies_ms.len()
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.latencies_ms.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.latencies_ms[rank - 1])
    }
}

impl EdgeLog {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The requests finished since the last call.
    pub fn read_new(&mut self) -> Requests {
        let mut requests = Requests::default();
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return requests;
        };
        if std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(self.offset)).is_err() {
            return requests;
        }
        let mut text = String::new();
        let Ok(read) = file.read_to_string(&mut text) else {
            return requests;
        };
        self.offset += read as u64;
        self.partial.push_str(&text);
        // The last line may still be being written.
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..complete).collect();
        for line in lines.lines() {
            let mut fields = line.split_whitespace();
            let code = fields.next().unwrap_or("");
            let seconds = fields.next().and_then(|s| s.parse::<f64>().ok());
            match seconds {
                Some(seconds) if code.starts_with('2') => {
                    requests.latencies_ms.push(seconds * 1000.0);
                }
                _ => requests.failed += 1,
            }
        }
        requests.latencies_ms.sort_by(f64::total_cmp);
        requests
    }
}

/// One second of the lab.
#[derive(Clone, Debug, Default)]
pub struct Second {
    /// Counter rates per second, keyed `verdict:reason` (XDP) and
    /// `requests_ok`/`handshakes_refused` (shield's own counters).
    pub rates: BTreeMap<String, f64>,
    /// What the edge's client saw.
    pub edge: Requests,
    pub seconds: f64,
}

impl Second {
    /// The edge's successful requests per second.
    fn served_per_second(&self) -> f64 {
        self.edge.ok() as f64 / self.seconds.max(0.001)
    }
}

/// What the view remembers.
pub struct View {
    pub metrics_url: String,
    history: VecDeque<Second>,
}

impl View {
    pub fn new(metrics_url: String) -> Self {
        Self {
            metrics_url,
            history: VecDeque::with_capacity(HISTORY),
        }
    }

    pub fn push(&mut self, second: Second) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(second);
    }

    pub fn last(&self) -> Option<&Second> {
        self.history.back()
    }

    /// The edge's successful and failed requests over the history kept,
    /// and the worst p99 of any second.
    pub fn edge_totals(&self) -> (usize, usize, f64) {
        let ok = self.history.iter().map(|s| s.edge.ok()).sum();
        let failed = self.history.iter().map(|s| s.edge.failed).sum();
        let worst = self
            .history
            .iter()
            .filter_map(|s| s.edge.quantile(0.99))
            .fold(0.0, f64::max);
        (ok, failed, worst)
    }

    /// One line for a log (not a terminal).
    pub fn line(&self) -> String {
        let Some(s) = self.last() else {
            return String::new();
        };
        let rate = |k: &str| s.rates.get(k).copied().unwrap_or(0.0);
        format!(
            "edge ok/s {:>5.1} failed {:>2} p99 {:>6} | outside {:>8.0}/s  syn_cookie {:>8.0}/s  udp_from_ranges {:>7.0}/s  bad_ack {:>6.0}/s  allowed {:>7.0}/s  refused hs {:>4.1}/s",
            s.served_per_second(),
            s.edge.failed,
            s.edge
                .quantile(0.99)
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms")),
            rate("drop:outside_ranges"),
            rate("answered:syn_cookie"),
            rate("drop:udp_from_ranges"),
            rate("drop:bad_ack"),
            rate("pass:allowed"),
            rate("handshakes_refused"),
        )
    }

    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        let rows = Layout::vertical(
            std::iter::once(Constraint::Length(4))
                .chain(std::iter::repeat_n(Constraint::Length(4), 2))
                .chain(std::iter::repeat_n(Constraint::Length(3), SERIES.len()))
                .chain(std::iter::once(Constraint::Min(0))),
        )
        .split(area);
        let (ok, failed, worst) = self.edge_totals();
        let header = Paragraph::new(vec![
            Line::from(format!(
                "shield lab   metrics: {}   q or Ctrl-C: stop and remove everything",
                self.metrics_url
            )),
            Line::from(
                "edge 173.245.48.10 (Cloudflare, AOP cert) · attacker 203.0.113.7: SYN flood; SYN, ACK, UDP forged from 173.245.48.99",
            ),
            Line::from(format!(
                "edge so far: {ok} served, {failed} failed, worst p99 of a second {worst:.1} ms"
            )),
        ])
        .block(Block::default().borders(Borders::BOTTOM));
        frame.render_widget(header, rows[0]);

        let last = self.last().cloned().unwrap_or_default();
        self.sparkline(
            frame,
            rows[1],
            format!(
                "legitimate requests/s (edge, mTLS, new connection each): {:.1}   failed this second: {}",
                last.served_per_second(),
                last.edge.failed
            ),
            |s| s.served_per_second().round() as u64,
            Color::Green,
        );
        let ms = |q: f64, s: &Second| s.edge.quantile(q);
        self.sparkline(
            frame,
            rows[2],
            format!(
                "legitimate latency p99: {}   p50: {}",
                ms(0.99, &last).map_or_else(|| "-".into(), |v| format!("{v:.1} ms")),
                ms(0.5, &last).map_or_else(|| "-".into(), |v| format!("{v:.1} ms")),
            ),
            |s| ms(0.99, s).map_or(0, |v| (v * 10.0).round() as u64),
            Color::Cyan,
        );
        for (i, (title, key, colour)) in SERIES.iter().enumerate() {
            let now = last.rates.get(*key).copied().unwrap_or(0.0);
            self.sparkline(
                frame,
                rows[3 + i],
                format!("{title}: {now:.0}"),
                |s| s.rates.get(*key).copied().unwrap_or(0.0).round() as u64,
                *colour,
            );
        }
    }

    fn sparkline(
        &self,
        frame: &mut Frame,
        area: Rect,
        title: String,
        value: impl Fn(&Second) -> u64,
        colour: Color,
    ) {
        // The newest second at the right edge.
        let width = usize::from(area.width.saturating_sub(2));
        let skip = self.history.len().saturating_sub(width);
        let data: Vec<u64> = self.history.iter().skip(skip).map(&value).collect();
        let widget = Sparkline::default()
            .block(Block::default().borders(Borders::TOP).title(title))
            .data(&data)
            .style(Style::default().fg(colour));
        frame.render_widget(widget, area);
    }

    /// The screen as text, `width` columns wide.
    pub fn render_text(&self, width: u16) -> String {
        let height = 4 + 2 * 4 + 3 * SERIES.len() as u16;
        // The test backend cannot fail (its error type is uninhabited).
        let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height));
        let Ok(_) = terminal.draw(|frame| self.draw(frame));
        buffer_text(terminal.backend().buffer())
    }
}

fn buffer_text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut text = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_log_is_read_by_whole_lines_as_it_grows() {
        let dir = std::env::temp_dir().join(format!("shield-lab-view-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.log");
        std::fs::write(&path, "200 0.010\n200 0.030\n000 2.0").unwrap();
        let mut log = EdgeLog::new(path.clone());
        let first = log.read_new();
        assert_eq!((first.ok(), first.failed), (2, 0));
        assert_eq!(first.quantile(0.99), Some(30.0));
        assert_eq!(first.quantile(0.5), Some(10.0));
        std::fs::write(&path, "200 0.010\n200 0.030\n000 2.000\n200 0.005\n").unwrap();
        let second = log.read_new();
        assert_eq!((second.ok(), second.failed), (1, 1));
        assert_eq!(second.latencies_ms, vec![5.0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_screen_shows_the_edge_beside_the_drops() {
        let mut view = View::new("http://169.254.94.2:9469/metrics".into());
        for i in 0..30 {
            let mut rates = BTreeMap::new();
            rates.insert("drop:outside_ranges".into(), 40_000.0 + f64::from(i));
            rates.insert("answered:syn_cookie".into(), 25_000.0);
            view.push(Second {
                rates,
                edge: Requests {
                    failed: 0,
                    latencies_ms: vec![8.0, 8.0, 8.5, 9.0, 9.0, 9.5, 10.0, 11.0, 12.5],
                },
                seconds: 1.0,
            });
        }
        let screen = view.render_text(120);
        assert!(
            screen.contains("metrics: http://169.254.94.2:9469/metrics"),
            "{screen}"
        );
        assert!(
            screen.contains("legitimate requests/s (edge, mTLS, new connection each): 9.0"),
            "{screen}"
        );
        assert!(
            screen.contains("legitimate latency p99: 12.5 ms"),
            "{screen}"
        );
        assert!(screen.contains("drop outside_ranges/s: 40029"), "{screen}");
        assert!(screen.contains("answered syn_cookie/s: 25000"), "{screen}");
        assert!(
            screen.contains("edge so far: 270 served, 0 failed"),
            "{screen}"
        );
        // A sparkline drew bars.
        assert!(screen.contains('█'), "{screen}");
    }
}
