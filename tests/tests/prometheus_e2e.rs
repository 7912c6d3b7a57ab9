//! A real Prometheus (Debian's) scraping shield in the lab: PromQL for drops
//! by reason returns what the attacker sent; the alert rules load; every
//! metric the rules and the dashboard use is one shield exports.

use std::{collections::BTreeSet, time::Duration};

use shield_tests::{addr::*, require_root, require_tool, wait_for, Lab};

const PROMETHEUS: &str = "127.0.0.1:9090";

fn query(lab: &Lab, promql: &str) -> serde_json::Value {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let out = lab
        .origin
        .exec_check(&[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "-G",
            &url,
            "--data-urlencode",
            &format!("query={promql}"),
        ])
        .expect("query Prometheus");
    serde_json::from_str(&out).expect("Prometheus answers JSON")
}

/// `shield_*` metric names in a PromQL-bearing text, without the `_total`
/// suffix OpenMetrics adds to counters.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("shield_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name.trim_end_matches("_total").to_owned());
    }
    names
}

#[test]
fn prometheus_scrapes_drops_by_reason_and_loads_the_alert_rules() {
    if !require_root() {
        return;
    }
    for tool in ["prometheus", "curl", "python3", "nsenter"] {
        require_tool(tool);
    }
    let lab = Lab::new().expect("lab");
    let config = lab.write_config("shield.toml", "").unwrap();
    let _shield = lab.start_shield(&config).unwrap();

    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = repo.join("deploy/prometheus/shield-alerts.yml");
    let prometheus_config = lab.work_dir.join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: shield\n    static_configs:\n      - targets: ['127.0.0.1:9469']\n",
            rules.display()
        ),
    )
    .unwrap();
    let data = lab.work_dir.join("prometheus-data");
    let _prometheus = lab
        .origin
        .spawn(&[
            "prometheus",
            &format!("--config.file={}", prometheus_config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address={PROMETHEUS}"),
        ])
        .expect("start Prometheus");
    wait_for(Duration::from_secs(30), || {
        let url = format!("http://{PROMETHEUS}/api/v1/query?query=up");
        lab.origin
            .exec_check(&["curl", "-sS", "--max-time", "2", &url])
            .is_ok_and(|out| out.contains("\"job\":\"shield\"") && out.contains("\"1\"]"))
    })
    .expect("Prometheus scrapes shield");

    // The attacker sends 40 datagrams to 443 and nothing else.
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(40):\n    s.sendto(b'x',('{ORIGIN_V4}',443)); time.sleep(0.002)\n"
    );
    lab.attacker
        .exec_check(&["python3", "-c", &script])
        .unwrap();
    let promql = "sum by (reason) (shield_xdp_packets_total{interface=\"eth1\",verdict=\"drop\"})";
    let mut last = serde_json::Value::Null;
    let seen = wait_for(Duration::from_secs(20), || {
        last = query(&lab, promql);
        last["data"]["result"].as_array().is_some_and(|r| {
            r.iter()
                .any(|s| s["metric"]["reason"] == "outside_ranges" && s["value"][1] == "40")
        })
    });
    assert!(
        seen.is_ok(),
        "PromQL drops by reason must show the 40 datagrams: {last}"
    );

    // The rule manager may publish its groups a moment after the first
    // scrape; wait for them rather than racing it.
    let mut rules_state = serde_json::Value::Null;
    let _ = wait_for(Duration::from_secs(20), || {
        rules_state = lab
            .origin
            .exec_check(&["curl", "-sS", &format!("http://{PROMETHEUS}/api/v1/rules")])
            .ok()
            .and_then(|out| serde_json::from_str(&out).ok())
            .unwrap_or(serde_json::Value::Null);
        rules_state["data"]["groups"]
            .as_array()
            .is_some_and(|groups| !groups.is_empty())
    });
    let loaded: Vec<_> = rules_state["data"]["groups"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(loaded.len(), 7, "{rules_state}");
    assert!(loaded.iter().all(|r| r["health"] == "ok"), "{rules_state}");

    // Every metric the rules and dashboard use is one shield exports.
    let scraped = lab
        .origin
        .exec_check(&["curl", "-sS", "http://127.0.0.1:9469/metrics"])
        .unwrap();
    let exported: BTreeSet<String> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    // Families without samples yet (no TLS traffic, no refresh in this lab)
    // are not in the scrape; those must at least be registered by name.
    let mut registered = String::new();
    let mut dirs = vec![repo.join("shield-userspace/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                registered.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    assert!(
        exported.contains("shield_xdp_packets") && exported.contains("shield_ranges_prefixes"),
        "{exported:?}"
    );
    for file in [
        "deploy/prometheus/shield-alerts.yml",
        "deploy/grafana/shield.json",
    ] {
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        for name in metric_names(&text) {
            assert!(
                exported.contains(&name) || registered.contains(&format!("\"{name}\"")),
                "{file} uses {name}, which shield neither exports nor registers: {exported:?}"
            );
        }
    }
}
