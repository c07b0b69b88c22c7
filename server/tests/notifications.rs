//! Birth and death notifications from institutions: `POST
//! /v1/notifications` on a real socket with the real router, API keys made
//! and revoked by the real `crvs-server` binary, the OpenAPI document, and
//! `crvs-server notifications --overdue`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crvs_schema::Date;
use crvs_server::{Clock, Server};
use serde_json::{Value, json};

const DAY_MS: i64 = 86_400_000;

struct Running {
    dir: tempfile::TempDir,
    server: Arc<Server>,
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn start() -> Running {
    start_in(tempfile::tempdir().expect("dir"), crvs_server::system_clock())
}

fn start_in(dir: tempfile::TempDir, clock: Clock) -> Running {
    let server = Arc::new(Server::open_with_clock(dir.path(), clock).expect("open"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(crvs_server::http::serve(listener, server.clone()));
    Running {
        dir,
        server,
        url,
        _rt: rt,
    }
}

/// Runs the real binary with `--json`; its exit status and its one JSON
/// object.
fn cli(args: &[&str], dir: &Path) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_crvs-server"))
        .args(args)
        .arg("--data")
        .arg(dir)
        .arg("--json")
        .output()
        .expect("run");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "exactly one line on stdout: {stdout}");
    (
        out.status.success(),
        serde_json::from_str(&stdout).expect("one JSON object"),
    )
}

/// A new API key with `scope`, made by the real binary.
fn api_key(dir: &Path, scope: &str) -> (String, String) {
    let (ok, v) = cli(&["api-key", "--name", "HMIS", "--scope", scope], dir);
    assert!(ok, "{v}");
    (
        v["key"].as_str().expect("key").to_string(),
        v["id"].as_str().expect("id").to_string(),
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
    text: String,
}

fn post(url: &str, key: Option<&str>, body: &[u8]) -> Answer {
    let mut req = agent()
        .post(format!("{url}/v1/notifications"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let mut resp = req.send(body).expect("request");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_string());
    let text = resp.body_mut().read_to_string().expect("body");
    Answer {
        status,
        challenge,
        body: serde_json::from_str(&text).expect("a JSON answer"),
        text,
    }
}

fn post_json(url: &str, key: &str, body: &Value) -> Answer {
    post(url, Some(key), &serde_json::to_vec(body).expect("json"))
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("../../fixtures/notification-birth.json")).expect("fixture")
}

fn death() -> Value {
    json!({
        "kind": "death",
        "source": {"system": "COURT-PP", "facility_name": "សាលាដំបូងរាជធានីភ្នំពេញ", "reference": "PP/2026/77"},
        "deceased": {"family_name": "ម៉ៅ", "given_name": "សុខា", "family_name_latin": "MAO",
                      "sex": "female", "date_of_birth": "1941-03-02", "nationality": "KHM",
                      "id_document": {"kind": "khmer_id_card", "number": "170998877"}},
        "date_of_death": "2026-11-25",
        "time_of_death": "23:10",
        "place_of_death": {"kind": "home", "village_code": "17100302"},
        "cause_of_death": {"text": "ជំងឺដាច់សរសៃឈាមខួរក្បាល", "icd10": "I64"},
        "residence_village_code": "17100302"
    })
}

fn count(dir: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

fn notifications(dir: &Path) -> i64 {
    count(dir, "SELECT COUNT(*) FROM notifications")
}

#[test]
fn the_birth_fixture_is_accepted_with_a_new_uuid_v7_and_routed_to_its_commune() {
    let s = start();
    let (key, key_id) = api_key(s.dir.path(), "notify");
    let a = post_json(&s.url, &key, &fixture());
    assert_eq!(a.status, 201, "{}", a.text);
    let id = uuid::Uuid::parse_str(a.body["notification_id"].as_str().expect("id")).expect("uuid");
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(a.body.as_object().expect("object").len(), 1);

    let pending = s.server.storage().pending_notifications("171003").expect("query");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].notification_id, id);
    assert_eq!(pending[0].kind, "birth");
    assert_eq!(pending[0].source_system, "HMIS");
    assert_eq!(pending[0].source_reference, "HMIS-2026-000123");
    assert_eq!(pending[0].api_key_id.to_string(), key_id);
    assert_eq!(pending[0].registered_record_id, None);
    let stored: Value = serde_json::from_str(&pending[0].payload).expect("payload");
    assert_eq!(stored, fixture());
}

#[test]
fn a_death_notification_is_accepted() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "notify");
    let a = post_json(&s.url, &key, &death());
    assert_eq!(a.status, 201, "{}", a.text);
    let pending = s.server.storage().pending_notifications("171003").expect("query");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].kind, "death");
}

#[test]
fn pending_notifications_of_a_commune_are_those_of_its_residence_villages() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "notify");
    let mut other = fixture();
    other["source"]["reference"] = "HMIS-2026-000124".into();
    other["residence_village_code"] = "17100401".into();
    assert_eq!(post_json(&s.url, &key, &fixture()).status, 201);
    assert_eq!(post_json(&s.url, &key, &other).status, 201);
    let here = s.server.storage().pending_notifications("171003").expect("query");
    let there = s.server.storage().pending_notifications("171004").expect("query");
    assert_eq!(here.len(), 1);
    assert_eq!(there.len(), 1);
    assert_eq!(here[0].source_reference, "HMIS-2026-000123");
    assert_eq!(there[0].source_reference, "HMIS-2026-000124");
    assert!(
        s.server
            .storage()
            .pending_notifications("171005")
            .expect("query")
            .is_empty()
    );
}

#[test]
fn a_replay_gets_the_same_id_with_200_and_creates_nothing() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "notify");
    let first = post_json(&s.url, &key, &fixture());
    assert_eq!(first.status, 201);
    let again = post_json(&s.url, &key, &fixture());
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["notification_id"], first.body["notification_id"]);
    // The same notification, differently spaced and with a name typed
    // with a zero-width space, is the same after normalization.
    let mut spaced = fixture();
    spaced["mother"]["given_name"] = "សុ\u{200B}ភា".into();
    let text = serde_json::to_string_pretty(&spaced).expect("json");
    let third = post(&s.url, Some(&key), text.as_bytes());
    assert_eq!(third.status, 200, "{}", third.text);
    assert_eq!(third.body["notification_id"], first.body["notification_id"]);
    assert_eq!(notifications(s.dir.path()), 1);
}

#[test]
fn another_notification_under_a_used_reference_is_a_conflict_and_changes_nothing() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "notify");
    assert_eq!(post_json(&s.url, &key, &fixture()).status, 201);
    let before = s.server.storage().pending_notifications("171003").expect("query");
    let mut changed = fixture();
    changed["child"]["weight_grams"] = 3200.into();
    let a = post_json(&s.url, &key, &changed);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (409, Some("conflict")),
        "{}",
        a.text
    );
    assert_eq!(
        s.server.storage().pending_notifications("171003").expect("query"),
        before
    );
    // The same reference from another system is another notification.
    let mut other_system = fixture();
    other_system["source"]["system"] = "HMIS-KAMPOT".into();
    assert_eq!(post_json(&s.url, &key, &other_system).status, 201);
    assert_eq!(notifications(s.dir.path()), 2);
}

#[test]
fn concurrent_replays_create_one_notification() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "notify");
    let body = serde_json::to_vec(&fixture()).expect("json");
    let answers: Vec<Answer> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| post(&s.url, Some(&key), &body)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(answers.iter().filter(|a| a.status == 201).count(), 1);
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 201));
    let id = &answers[0].body["notification_id"];
    assert!(answers.iter().all(|a| &a.body["notification_id"] == id));
    assert_eq!(notifications(s.dir.path()), 1);
}

#[test]
fn no_key_a_bad_key_an_unknown_key_and_a_revoked_key_get_the_same_401_with_a_bearer_challenge() {
    let s = start();
    let (key, key_id) = api_key(s.dir.path(), "notify");
    let body = serde_json::to_vec(&fixture()).expect("json");
    let unknown = format!("crvs_ak_{}", "ab".repeat(32));
    let mut answers = vec![
        post(&s.url, None, &body),
        post(&s.url, Some("not-a-key"), &body),
        post(&s.url, Some(&key[..key.len() - 2]), &body),
        post(&s.url, Some(&unknown), &body),
    ];
    // Another scheme with the right key.
    let mut resp = agent()
        .post(format!("{}/v1/notifications", s.url))
        .header("authorization", format!("Basic {key}"))
        .send(&body[..])
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let _ = resp.body_mut().read_to_string();

    // Revoked through the CLI while the server runs: refused from the next
    // request on.
    assert_eq!(post(&s.url, Some(&key), &body).status, 201);
    let (ok, v) = cli(&["api-key", "revoke", "--id", &key_id], s.dir.path());
    assert!(ok, "{v}");
    assert_eq!(v["revoked"], true);
    answers.push(post(&s.url, Some(&key), &body));

    for a in &answers {
        assert_eq!(a.status, 401, "{}", a.text);
        assert_eq!(a.body["error"], "unauthenticated");
        assert!(
            a.challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")),
            "{:?}",
            a.challenge
        );
        // Nothing tells which part failed.
        assert_eq!(a.text, answers[0].text);
    }
    assert_eq!(notifications(s.dir.path()), 1);
    let (ok, v) = cli(&["api-key", "list"], s.dir.path());
    assert!(ok);
    assert!(v["api_keys"][0]["revoked_at"].is_i64());
    assert!(!v.to_string().contains(&key[8..]), "the list never shows a key");
}

#[test]
fn a_key_without_the_notify_scope_gets_403() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "verify");
    let a = post_json(&s.url, &key, &fixture());
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (403, Some("forbidden")),
        "{}",
        a.text
    );
    assert_eq!(notifications(s.dir.path()), 0);
}

#[test]
fn an_invalid_notification_gets_422_naming_each_bad_field_but_never_its_value() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "notify");
    let mut bad = fixture();
    bad["child"]["date_of_birth"] = "2999-01-01".into();
    bad["mother"]["given_name"] = "SECRETNAME\u{202E}".into();
    bad["mother"]["id_document"]["number"] = "SECRET\u{200B}NUMBER".into();
    bad["place_of_birth"]["village_code"] = "99999999".into();
    bad["child"]["SECRET_KEY"] = 1.into();
    let a = post_json(&s.url, &key, &bad);
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(a.body["error"], "invalid_notification");
    let fields: Vec<&str> = a.body["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["field"].as_str().expect("field"))
        .collect();
    for f in [
        "child.date_of_birth",
        "mother.given_name",
        "mother.id_document.number",
        "place_of_birth.village_code",
        "child.SECRET_KEY",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
        assert!(a.body["message"].as_str().expect("message").contains(f));
    }
    assert!(!a.text.contains("SECRETNAME") && !a.text.contains("NUMBER") && !a.text.contains("2999"));

    // Not JSON at all, and JSON of the wrong kind.
    let a = post(&s.url, Some(&key), b"{\"kind\": ");
    assert_eq!((a.status, a.body["error"].as_str()), (400, Some("malformed")));
    let a = post_json(&s.url, &key, &json!(["birth"]));
    assert_eq!(a.status, 422);
    assert_eq!(a.body["problems"][0]["field"], "$");
    assert_eq!(notifications(s.dir.path()), 0);
}

#[test]
fn an_oversized_body_is_refused_with_413_and_stores_nothing() {
    let s = start();
    let (key, _) = api_key(s.dir.path(), "notify");
    let mut big = fixture();
    big["source"]["facility_name"] = "ក".repeat(crvs_server::http::MAX_JSON_BYTES).into();
    let body = serde_json::to_vec(&big).expect("json");
    assert!(body.len() > crvs_server::http::MAX_JSON_BYTES);
    let mut resp = agent()
        .post(format!("{}/v1/notifications", s.url))
        .header("authorization", format!("Bearer {key}"))
        .send(&body[..]);
    match &mut resp {
        Ok(resp) => {
            assert_eq!(resp.status().as_u16(), 413);
            let v: Value =
                serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("json");
            assert_eq!(v["error"], "too_large");
        }
        // The server may close the connection after answering before the
        // client has finished sending; that is a refusal too.
        Err(e) => assert!(matches!(e, ureq::Error::Io(_)), "{e}"),
    }
    assert_eq!(notifications(s.dir.path()), 0);
}

#[test]
fn the_openapi_document_describes_the_endpoint_its_fields_and_its_key() {
    let s = start();
    let mut resp = agent()
        .get(format!("{}/v1/openapi.json", s.url))
        .call()
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().is_ok_and(|t| t.starts_with("application/json")))
    );
    let doc: Value =
        serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("valid JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let op = &doc["paths"]["/v1/notifications"]["post"];
    assert!(op.is_object(), "the path is documented");
    for status in ["200", "201", "401", "403", "409", "413", "422"] {
        assert!(op["responses"][status].is_object(), "{status}");
    }
    assert_eq!(op["security"][0]["api_key"][0], "notify");
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let schemas = &doc["components"]["schemas"];
    for name in ["Notification", "BirthNotification", "DeathNotification", "Source"] {
        assert!(schemas[name].is_object(), "{name}");
    }
    let birth = &schemas["BirthNotification"];
    for field in [
        "source",
        "child",
        "place_of_birth",
        "mother",
        "residence_village_code",
    ] {
        assert!(birth["properties"][field].is_object(), "{field}");
        assert!(
            birth["required"]
                .as_array()
                .expect("required")
                .contains(&json!(field))
        );
    }
    assert_eq!(
        schemas["NotifiedChild"]["properties"]["sex"]["enum"],
        json!(["male", "female"])
    );
    assert_eq!(
        birth["properties"]["residence_village_code"]["pattern"],
        "^[0-9]{8}$"
    );
    let source = &schemas["Source"];
    assert!(
        !source["required"]
            .as_array()
            .expect("required")
            .contains(&json!("facility_code"))
    );
    // What the server accepts fits the document: every field sent is a
    // documented property of the right type, every required one is sent,
    // and `kind` is one of the documented values.
    let notification = json!({"$ref": "#/components/schemas/Notification"});
    fits(&doc, &notification, &fixture(), "$");
    fits(&doc, &notification, &death(), "$");
    let mut marriage = fixture();
    marriage["kind"] = "marriage".into();
    assert!(
        !fits_any(&doc, &notification, &marriage),
        "a kind the document does not name"
    );
    let mut unknown = fixture();
    unknown["mother"]["id_document"]["issued_by"] = "x".into();
    assert!(
        !fits_any(&doc, &notification, &unknown),
        "a field the document does not name"
    );
    let mut missing = death();
    missing["deceased"].as_object_mut().expect("object").remove("sex");
    assert!(
        !fits_any(&doc, &notification, &missing),
        "a required field left out"
    );
}

fn resolve<'d>(doc: &'d Value, schema: &'d Value) -> &'d Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().expect("ref");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn fits_any(doc: &Value, schema: &Value, value: &Value) -> bool {
    std::panic::catch_unwind(|| fits(doc, schema, value, "$")).is_ok()
}

/// Panics unless `value` fits `schema`: types, objects (their properties,
/// required fields, no others), enums and `oneOf`, which is as much JSON
/// Schema as the document uses for structure.
fn fits(doc: &Value, schema: &Value, value: &Value, path: &str) {
    let schema = resolve(doc, schema);
    if let Some(options) = schema["oneOf"].as_array() {
        let n = options.iter().filter(|o| fits_any(doc, o, value)).count();
        assert_eq!(n, 1, "{path}: fits {n} of the oneOf");
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_of = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    assert!(
        types.is_empty() || types.contains(&type_of),
        "{path}: a {type_of}, not one of {types:?}"
    );
    if let Some(values) = schema["enum"].as_array() {
        assert!(values.contains(value), "{path}: not one of {values:?}");
    }
    if let Some(props) = schema["properties"].as_object() {
        let obj = value
            .as_object()
            .unwrap_or_else(|| panic!("{path}: not an object"));
        for (k, v) in obj {
            let p = props
                .get(k)
                .unwrap_or_else(|| panic!("{path}.{k}: not documented"));
            fits(doc, p, v, &format!("{path}.{k}"));
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().expect("name");
            assert!(obj.contains_key(r), "{path}.{r}: required but not sent");
        }
    }
}

#[test]
fn notifications_unregistered_past_the_threshold_are_listed_by_the_cli_as_overdue() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().to_path_buf();
    let now = crvs_server::system_clock()();
    let then = now - 40 * DAY_MS;
    // Received 40 days ago, by a server whose clock said so.
    let old = {
        let s = start_in(dir, Arc::new(move || then));
        let (key, _) = api_key(s.dir.path(), "notify");
        let mut old = fixture();
        let dob = Date::today_in_cambodia(then).add_days(-2).expect("date");
        old["child"]["date_of_birth"] = dob.to_string().into();
        old["source"]["reference"] = "HMIS-OLD-1".into();
        let a = post_json(&s.url, &key, &old);
        assert_eq!(a.status, 201, "{}", a.text);
        let mut died = death();
        died["date_of_death"] = Date::today_in_cambodia(then)
            .add_days(-1)
            .expect("date")
            .to_string()
            .into();
        let died = post_json(&s.url, &key, &died);
        assert_eq!(died.status, 201, "{}", died.text);
        let id = a.body["notification_id"].as_str().expect("id").to_string();
        drop(s.server);
        (id, s.dir, key)
    };
    let (old_id, dir, key) = old;
    // And one received today.
    let s = start_in(dir, crvs_server::system_clock());
    let mut today = fixture();
    today["source"]["reference"] = "HMIS-NEW-1".into();
    assert_eq!(post_json(&s.url, &key, &today).status, 201);

    let (ok, v) = cli(&["notifications", "--overdue"], &path);
    assert!(ok, "{v}");
    let list = v["notifications"].as_array().expect("list");
    // The death was received 40 days ago too.
    assert_eq!(list.len(), 2, "{v}");
    // Both were received at the same instant of the fixed clock.
    let birth = list
        .iter()
        .find(|n| n["reference"] == "HMIS-OLD-1")
        .expect("the old birth");
    assert_eq!(birth["notification_id"], old_id);
    assert_eq!(birth["kind"], "birth");
    assert_eq!(birth["commune"], "171003");
    assert_eq!(birth["source_system"], "HMIS");
    assert_eq!(birth["received_at"], then);
    assert!(
        list.iter()
            .any(|n| n["kind"] == "death" && n["reference"] == "PP/2026/77")
    );
    let mut keys: Vec<&str> = birth
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "commune",
            "kind",
            "notification_id",
            "received_at",
            "reference",
            "source_system"
        ]
    );
    assert!(
        !v.to_string().contains("ចាន់") && !v.to_string().contains("CHAN"),
        "no names"
    );

    let (_, v) = cli(&["notifications", "--overdue", "--days", "41"], &path);
    assert_eq!(v["notifications"], json!([]));
    let (_, v) = cli(&["notifications", "--overdue", "--days", "39"], &path);
    assert_eq!(v["notifications"].as_array().expect("list").len(), 2);
    let (_, v) = cli(&["notifications"], &path);
    assert_eq!(v["notifications"].as_array().expect("list").len(), 3);
}

#[test]
fn an_unknown_scope_or_an_empty_name_is_refused_by_the_cli() {
    let dir = tempfile::tempdir().expect("dir");
    // A server's data folder (the commands refuse one without a database).
    drop(crvs_server::Server::open(dir.path()).expect("server"));
    let (ok, v) = cli(&["api-key", "--name", "HMIS", "--scope", "admin"], dir.path());
    assert!(!ok);
    assert_eq!(v["error"], "invalid_argument");
    let (ok, v) = cli(&["api-key", "--name", " ", "--scope", "notify"], dir.path());
    assert!(!ok);
    assert_eq!(v["error"], "invalid_argument");
    let (ok, v) = cli(
        &[
            "api-key",
            "revoke",
            "--id",
            "01900000-0000-7000-8000-000000000000",
        ],
        dir.path(),
    );
    assert!(!ok);
    assert_eq!(v["error"], "unknown_api_key");
}
