//! `shield ranges` and `shield ranges --refresh` from a file source: the
//! diff is shown, a shrink is refused unless accepted, the cache is written.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn shield(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(args)
        .env("SHIELD_LOG", "error")
        .output()
        .expect("run shield");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn refresh_shows_the_diff_and_guards_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("ips.json");
    let cache = dir.path().join("state/ranges.json");
    let config = dir.path().join("shield.toml");
    std::fs::write(
        &config,
        format!(
            "[ranges]\nsources = [{:?}]\ncache = {:?}\n",
            source.display().to_string(),
            cache.display().to_string()
        ),
    )
    .unwrap();
    let api = include_str!("../data/cloudflare-ips-api.json");
    let config = config.to_str().unwrap();

    let (code, out) = shield(&["ranges", "-c", config]);
    assert_eq!(code, 0);
    assert!(out.contains("source: embedded snapshot"), "{out}");
    assert!(out.contains("ipv4: 15 prefixes, ipv6: 7 prefixes"), "{out}");

    let grown = api
        .replace("\"131.0.72.0/22\"", "\"131.0.72.0/22\", \"198.51.99.0/24\"")
        .replace("38f79d050aa027e3be3865e495dcc9bc", "etag-2");
    std::fs::write(&source, grown).unwrap();
    let (code, out) = shield(&["ranges", "--refresh", "-c", config]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("result: updated"), "{out}");
    assert!(out.contains("+ 198.51.99.0/24"), "{out}");
    assert!(std::fs::read_to_string(&cache).unwrap().contains("etag-2"));

    let (code, out) = shield(&["ranges", "-c", config]);
    assert_eq!(code, 0);
    assert!(out.contains("etag: etag-2"), "{out}");
    assert!(out.contains("age: "), "{out}");
    assert!(out.contains("ipv4: 16 prefixes"), "{out}");

    // Only 173.245.48.0/20 left: a shrink of over 99%.
    let mut small: serde_json::Value = serde_json::from_str(api).unwrap();
    small["result"]["ipv4_cidrs"] = serde_json::json!(["173.245.48.0/20"]);
    small["result"]["etag"] = serde_json::json!("small");
    std::fs::write(&source, small.to_string()).unwrap();
    let (code, out) = shield(&["ranges", "--refresh", "-c", config]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("result: shrink"), "{out}");
    assert!(std::fs::read_to_string(&cache).unwrap().contains("etag-2"));
    let (code, out) = shield(&["ranges", "--refresh", "--accept-shrink", "-c", config]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("- 104.16.0.0/13"), "{out}");
    assert!(!out.contains("+ "), "{out}");
}

/// The line `shield ranges` prints for `prefix`, if any.
fn prefix_line<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .find(|line| line.split_whitespace().next() == Some(prefix))
}

#[test]
fn ranges_names_the_network_of_each_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("ips.json");
    let cache = dir.path().join("state/ranges.json");
    let config_path = dir.path().join("shield.toml");
    let write_config = |china_network: bool| {
        std::fs::write(
            &config_path,
            format!(
                "[ranges]\nsources = [{:?}]\ncache = {:?}\nchina_network = {china_network}\nextra_allow = [\"198.51.99.0/24\"]\n",
                source.display().to_string(),
                cache.display().to_string()
            ),
        )
        .unwrap();
    };
    write_config(true);
    let config = config_path.to_str().unwrap();
    let api = include_str!("../data/cloudflare-ips-api.json");

    // No cache yet: the snapshot, which has no China Network.
    let (code, out) = shield(&["ranges", "-c", config]);
    assert_eq!(code, 0);
    assert!(
        out.contains("china_network: on, but these ranges have no JD Cloud list yet"),
        "{out}"
    );

    // A file of the API's shape without jdcloud_cidrs: refused.
    std::fs::write(&source, api).unwrap();
    let (code, out) = shield(&["ranges", "--refresh", "-c", config]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("result: jdcloud_missing"), "{out}");
    assert!(!cache.exists());

    // With the list (one entry also in Cloudflare's): fetched and shown.
    let mut with: serde_json::Value = serde_json::from_str(api).unwrap();
    with["result"]["jdcloud_cidrs"] =
        serde_json::json!(["116.196.0.0/17", "2402:db40:5100::/40", "173.245.48.0/20"]);
    with["result"]["etag"] = serde_json::json!("with-jd");
    std::fs::write(&source, with.to_string()).unwrap();
    let (code, out) = shield(&["ranges", "--refresh", "-c", config]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("result: updated"), "{out}");
    assert!(out.contains("+ 116.196.0.0/17"), "{out}");
    assert!(out.contains("+ 2402:db40:5100::/40"), "{out}");

    let (code, out) = shield(&["ranges", "-c", config]);
    assert_eq!(code, 0);
    assert!(out.contains("china_network: on\n"), "{out}");
    assert!(
        out.contains("ipv4: 15 prefixes, ipv6: 7 prefixes, jdcloud: 3 prefixes, extra_allow: 1"),
        "{out}"
    );
    let network = |prefix: &str| {
        let line = prefix_line(&out, prefix).unwrap_or_else(|| panic!("{prefix} in {out}"));
        line.split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(network("116.196.0.0/17"), "jdcloud");
    assert_eq!(network("2402:db40:5100::/40"), "jdcloud");
    assert_eq!(network("104.16.0.0/13"), "cloudflare");
    assert_eq!(network("2400:cb00::/32"), "cloudflare");
    assert_eq!(network("173.245.48.0/20"), "cloudflare, jdcloud");
    assert_eq!(network("198.51.99.0/24"), "extra_allow");
    let (code, out) = shield(&["classify", "116.196.1.1", "--port", "443", "-c", config]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("116.196.0.0/17"), "{out}");

    // Off: the cached list is not in force, so not shown either.
    write_config(false);
    let (code, out) = shield(&["ranges", "-c", config]);
    assert_eq!(code, 0);
    assert!(out.contains("china_network: off"), "{out}");
    assert!(
        out.contains("ipv4: 15 prefixes, ipv6: 7 prefixes, extra_allow: 1"),
        "{out}"
    );
    assert!(prefix_line(&out, "116.196.0.0/17").is_none(), "{out}");
    assert!(!out.contains("jdcloud"), "{out}");
    let (code, out) = shield(&["classify", "116.196.1.1", "--port", "443", "-c", config]);
    assert_eq!(code, 1, "{out}");
}
