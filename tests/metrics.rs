//! Operators' view of a running server: `GET /metrics` (Prometheus text,
//! behind a bearer token) and JSON logs (`--log-format json`), against the
//! real `crvs-server` process on a real socket, with a tablet driven
//! through the real `crvs` binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crvs_e2e::*;

const TOKEN: &str = "metrics-scrape-token-0123456789abcdefXYZ";

/// `GET path` on a fresh connection, with an optional bearer token:
/// the status code and the body.
fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// The value of the sample `name{labels}` (labels exactly as rendered, in
/// their order), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// The label sets of every sample of `metric` (`route="/v1/sync",...`).
fn label_sets<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(metric)?.strip_prefix('{'))
        .filter_map(|l| l.split_once('}').map(|(labels, _)| labels))
        .collect()
}

fn token_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("metrics.token");
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The names and the ID number of the fixture's child and parents.
fn fixture_names() -> Vec<String> {
    let birth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("birth-sok-dara.json")).unwrap()).unwrap();
    let mut names = Vec::new();
    for person in ["child", "mother", "father"] {
        for field in [
            "family_name",
            "given_name",
            "family_name_latin",
            "given_name_latin",
        ] {
            names.push(birth[person][field].as_str().expect("a name").to_string());
        }
    }
    names.push(
        birth["mother"]["id_document"]["number"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    names.sort();
    names.dedup();
    assert!(names.len() >= 9, "{names:?}");
    names
}

#[test]
fn metrics_need_the_token_and_count_a_synced_birth_and_logs_are_json_without_names() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let log = tmp.path().join("server.log");
    let token = token_file(tmp.path(), TOKEN, 0o600);
    let server = Server::start_with(
        &server_data,
        &ServerOptions {
            args: vec![
                "--metrics-token-file".into(),
                token.display().to_string(),
                "--log-format".into(),
                "json".into(),
            ],
            log_file: Some(log.clone()),
            log_level: Some("info".into()),
            // The flag wins over the variable.
            env: vec![("CRVS_LOG_FORMAT".into(), "text".into())],
            ..ServerOptions::default()
        },
    );
    let addr = server.addr;

    // Without the token, or with another one: 401 and nothing else.
    for bearer in [None, Some("metrics-scrape-token-0123456789abcdefXYz"), Some("")] {
        let (status, body) = get(addr, "/metrics", bearer);
        assert_eq!(status, 401, "{bearer:?}");
        assert_eq!(body, "", "no detail in a refusal");
    }
    let (status, before) = get(addr, "/metrics", Some(TOKEN));
    assert_eq!(status, 200, "{before}");
    assert!(before.contains("# TYPE crvs_holds_open gauge"), "{before}");
    assert_eq!(sample(&before, "crvs_holds_open"), 0.0);
    assert_eq!(sample(&before, "crvs_devices{since=\"never\"}"), 0.0);
    let kidcs_before = sample(&before, "crvs_kidc_issued_total{reason=\"birth_approved\"}");
    let applied_before = sample(
        &before,
        "crvs_change_sets_total{outcome=\"applied\",reason=\"none\"}",
    );

    // A tablet enrols: one device that never synced.
    let t = Tablet::new(tmp.path().join("tablet"));
    let device_id = t.init_and_enroll("171003", &server);
    let (_, enrolled) = get(addr, "/metrics", Some(TOKEN));
    assert_eq!(
        sample(&enrolled, "crvs_devices{since=\"never\"}"),
        1.0,
        "{enrolled}"
    );

    // It registers and approves a birth offline, then syncs: a KIdC.
    let record = t.register_approved(&fixture("birth-sok-dara.json"));
    t.run(&["sync"]).expect_ok();
    let shown = t.show(&record);
    assert_eq!(shown["status"], "registered", "{shown}");
    // A path no route matches, with something in it that must not show.
    assert_eq!(get(addr, "/v1/records/some-secret-path", None).0, 404);

    let (status, after) = get(addr, "/metrics", Some(TOKEN));
    assert_eq!(status, 200);
    assert_eq!(
        sample(&after, "crvs_kidc_issued_total{reason=\"birth_approved\"}"),
        kidcs_before + 1.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "crvs_change_sets_total{outcome=\"applied\",reason=\"none\"}"
        ),
        applied_before + 1.0,
        "{after}"
    );
    assert!(
        label_sets(&after, "crvs_change_sets_total")
            .iter()
            .all(|l| !l.contains("refused")),
        "nothing was refused: {after}"
    );
    // Requests by route template and status, with latency buckets.
    assert_eq!(
        sample(
            &after,
            "crvs_http_requests_total{route=\"/v1/sync\",status=\"200\"}"
        ),
        1.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "crvs_http_requests_total{route=\"/v1/enroll\",status=\"200\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &after,
            "crvs_http_requests_total{route=\"/metrics\",status=\"401\"}"
        ) >= 3.0
    );
    assert_eq!(
        sample(
            &after,
            "crvs_http_requests_total{route=\"unmatched\",status=\"404\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "crvs_http_request_duration_seconds_bucket{route=\"/v1/sync\",status=\"200\",le=\"+Inf\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "crvs_http_request_duration_seconds_count{route=\"/v1/sync\",status=\"200\"}"
        ),
        1.0
    );
    let routes: Vec<&str> = label_sets(&after, "crvs_http_requests_total")
        .into_iter()
        .filter_map(|l| l.strip_prefix("route=\"")?.split('"').next())
        .collect();
    assert!(!routes.is_empty());
    for r in &routes {
        assert!(
            ["/v1/sync", "/v1/enroll", "/v1/health", "/metrics", "unmatched"].contains(r),
            "route {r} is not a template: {after}"
        );
    }
    // The writer ran the sync request in a commit group, and was busy for
    // a while doing it; nothing waits for it now.
    assert_eq!(
        sample(&after, "crvs_commit_group_requests_total")
            - sample(&before, "crvs_commit_group_requests_total"),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "crvs_commit_groups_total") - sample(&before, "crvs_commit_groups_total"),
        1.0
    );
    assert!(sample(&after, "crvs_writer_busy_seconds") > sample(&before, "crvs_writer_busy_seconds"));
    assert_eq!(sample(&after, "crvs_writer_queue"), 0.0);
    // The device synced just now; nothing is held.
    assert_eq!(sample(&after, "crvs_devices{since=\"1h\"}"), 1.0, "{after}");
    assert_eq!(sample(&after, "crvs_devices{since=\"never\"}"), 0.0);
    assert_eq!(sample(&after, "crvs_holds_open"), 0.0);
    assert!(sample(&after, "crvs_device_sync_age_max_seconds") < 3600.0);
    // Its answer carried the whole feed: nobody lags behind it.
    assert_eq!(sample(&after, "crvs_devices_behind_feed"), 0.0, "{after}");
    assert_eq!(sample(&after, "crvs_feed_lag_max_seconds"), 0.0, "{after}");
    // What the tablet reported with its one sync request: nothing waiting
    // behind it, and its version.
    assert_eq!(sample(&after, "crvs_tablet_outbox_change_sets"), 0.0, "{after}");
    assert_eq!(sample(&after, "crvs_tablet_outbox_records"), 0.0, "{after}");
    assert_eq!(
        sample(
            &after,
            &format!(
                "crvs_devices_by_app_version{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0,
        "{after}"
    );
    // No id, no name, no raw path in the whole text.
    for secret in fixture_names().iter().map(String::as_str).chain([
        device_id.as_str(),
        record.as_str(),
        "some-secret-path",
        "/v1/records",
    ]) {
        assert!(!after.contains(secret), "{secret} in the metrics");
    }

    // The logs: JSON lines, the sync among them, no names.
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = 0;
    let mut sync_line = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        sync_line |= v["fields"]["message"] == "sync" && v["fields"]["device"] == device_id.as_str();
        lines += 1;
    }
    assert!(lines >= 3, "{text}");
    assert!(sync_line, "the sync is logged, by device id: {text}");
    for name in fixture_names() {
        assert!(!text.contains(&name), "{name} in the server's log");
    }
}

#[test]
fn without_a_token_metrics_are_not_found_and_a_bad_token_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    {
        let server = Server::start(&server_data);
        let (status, body) = get(server.addr, "/metrics", Some(TOKEN));
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("not_found"), "{body}");
    }
    // The token from the environment.
    {
        let server = Server::start_with(
            &server_data,
            &ServerOptions {
                env: vec![("CRVS_METRICS_TOKEN".into(), TOKEN.into())],
                ..ServerOptions::default()
            },
        );
        assert_eq!(get(server.addr, "/metrics", None).0, 401);
        assert_eq!(get(server.addr, "/metrics", Some(TOKEN)).0, 200);
    }
    let refused = |options: ServerOptions| {
        let out = Server::command(&server_data, &options)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run crvs-server");
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let v: serde_json::Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        let message = v["message"].as_str().unwrap_or_default().to_string();
        assert!(
            !message.contains(TOKEN) && !message.contains("0123456789"),
            "{message}"
        );
        message
    };
    // A file others may read, or a short token: refused before serving.
    let readable = token_file(tmp.path(), TOKEN, 0o644);
    let m = refused(ServerOptions {
        args: vec!["--metrics-token-file".into(), readable.display().to_string()],
        ..ServerOptions::default()
    });
    assert!(m.contains("644"), "{m}");
    let short = token_file(tmp.path(), "0123456789", 0o600);
    let m = refused(ServerOptions {
        args: vec!["--metrics-token-file".into(), short.display().to_string()],
        ..ServerOptions::default()
    });
    assert!(m.contains("shorter than 32"), "{m}");
    let m = refused(ServerOptions {
        env: vec![("CRVS_METRICS_TOKEN".into(), "0123456789".into())],
        ..ServerOptions::default()
    });
    assert!(m.contains("CRVS_METRICS_TOKEN"), "{m}");
}
