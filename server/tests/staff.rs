//! The staff roster: `crvs-server staff add|remove|list` run as the real
//! binary against a real data folder, and the roster's history read back
//! through the library (`Storage::staff_role_at`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use crvs_server::Server;
use crvs_server::staff::{self, PIN_HASH_PARAMS, Pin, Role, Roles};
use serde_json::Value;

const COMMUNE: &str = "171003";
const OTHER_COMMUNE: &str = "171004";

/// What one run of the binary gave.
struct Run {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
}

/// Runs `crvs-server staff ARGS --data DIR --json`, with `CRVS_PIN` set
/// to `pin` or unset, and `USER` set to `user` when given.
fn staff_env(dir: &Path, args: &[&str], pin: Option<&str>, user: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crvs-server"));
    cmd.arg("staff")
        .args(args)
        .arg("--data")
        .arg(dir)
        .arg("--json")
        .env_remove("CRVS_PIN")
        .env("RUST_LOG", "warn");
    if let Some(pin) = pin {
        cmd.env("CRVS_PIN", pin);
    }
    if let Some(user) = user {
        cmd.env("USER", user);
    }
    let out = cmd.output().expect("run crvs-server");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("one JSON object on stdout ({e}): {stdout:?}, stderr {stderr:?}"));
    Run {
        code: out.status.code().expect("exited"),
        json,
        stdout,
        stderr,
    }
}

/// A server's data folder: the staff commands refuse one without a
/// database (a mistyped `--data` must not make a new server).
fn server_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop(crvs_server::Server::open(dir.path()).expect("server"));
    dir
}

fn staff(dir: &Path, args: &[&str], pin: Option<&str>) -> Run {
    staff_env(dir, args, pin, None)
}

fn ok(run: Run) -> Value {
    assert_eq!(run.code, 0, "stdout {:?} stderr {:?}", run.stdout, run.stderr);
    run.json
}

fn add(dir: &Path, id: &str, roles: &str, pin: Option<&str>) -> Run {
    staff(
        dir,
        &[
            "add",
            "--commune",
            COMMUNE,
            "--id",
            id,
            "--role",
            roles,
            "--by",
            "op-1",
        ],
        pin,
    )
}

fn list(dir: &Path, commune: &str) -> Vec<Value> {
    let v = ok(staff(dir, &["list", "--commune", commune], None));
    v["staff"].as_array().expect("a staff array").clone()
}

fn roles(v: &Value) -> Vec<&str> {
    v["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| r.as_str().expect("a role name"))
        .collect()
}

/// Every byte of every file in the data folder (database, its log, the
/// ledger, keys).
fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("data folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn staff_added_listed_and_removed_through_the_binary() {
    let dir = server_dir();
    let a = ok(add(dir.path(), "clerk-01", "clerk,verifier", Some("480172")));
    assert_eq!(a["commune"], COMMUNE);
    assert_eq!(a["id"], "clerk-01");
    assert_eq!(roles(&a), ["clerk", "verifier"]);
    assert_eq!(a["changes"], serde_json::json!(["added", "pin_set"]));
    assert!(a["removed_at"].is_null());
    ok(add(dir.path(), "reg-7", "registrar", Some("593018")));

    let roster = list(dir.path(), COMMUNE);
    assert_eq!(roster.len(), 2);
    assert_eq!(roster[0]["id"], "clerk-01");
    assert_eq!(roster[1]["id"], "reg-7");
    assert_eq!(roles(&roster[1]), ["registrar"]);
    for entry in &roster {
        let mut keys: Vec<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["added_at", "id", "removed_at", "roles"], "never the hash");
        assert!(entry["added_at"].as_i64().unwrap() > 0);
        assert!(entry["removed_at"].is_null());
    }
    // Another commune's roster is its own.
    assert!(list(dir.path(), OTHER_COMMUNE).is_empty());

    let r = ok(staff(
        dir.path(),
        &["remove", "--commune", COMMUNE, "--id", "clerk-01", "--by", "op-2"],
        None,
    ));
    assert_eq!(r["changes"], serde_json::json!(["removed"]));
    let roster = list(dir.path(), COMMUNE);
    assert_eq!(roster.len(), 2, "a removed member stays listed, as removed");
    assert!(roster[0]["removed_at"].as_i64().unwrap() >= roster[0]["added_at"].as_i64().unwrap());
    assert!(roles(&roster[0]).is_empty());
    assert!(roster[1]["removed_at"].is_null());

    // Removing someone who is not on the roster is an error, exit code 1.
    let again = staff(
        dir.path(),
        &["remove", "--commune", COMMUNE, "--id", "clerk-01"],
        None,
    );
    assert_eq!(again.code, 1);
    assert_eq!(again.json["error"], "unknown_staff");
    let nobody = staff(
        dir.path(),
        &["remove", "--commune", COMMUNE, "--id", "nobody"],
        None,
    );
    assert_eq!(
        (nobody.code, nobody.json["error"].as_str()),
        (1, Some("unknown_staff"))
    );

    // Put back after the removal: needs a PIN again.
    let back = add(dir.path(), "clerk-01", "clerk", None);
    assert_eq!(
        (back.code, back.json["error"].as_str()),
        (1, Some("invalid_argument"))
    );
    assert!(back.json["message"].as_str().unwrap().contains("CRVS_PIN"));
    let back = ok(add(dir.path(), "clerk-01", "clerk", Some("246813")));
    assert_eq!(back["changes"], serde_json::json!(["added", "pin_set"]));
    assert!(back["removed_at"].is_null());
}

#[test]
fn roles_are_parsed_and_unknown_roles_refused() {
    let dir = server_dir();
    let a = ok(add(dir.path(), "a-1", "Registrar, clerk", Some("480172")));
    assert_eq!(roles(&a), ["clerk", "registrar"]);
    // `--role` may also be repeated.
    let b = ok(staff(
        dir.path(),
        &[
            "add",
            "--commune",
            COMMUNE,
            "--id",
            "b-1",
            "--role",
            "verifier",
            "--role",
            "clerk",
            "--by",
            "op",
        ],
        Some("480172"),
    ));
    assert_eq!(roles(&b), ["clerk", "verifier"]);

    for bad in ["clerk,janitor", "", "clerk,,verifier", "admin"] {
        let r = add(dir.path(), "c-1", bad, Some("480172"));
        assert_eq!(r.code, 1, "{bad:?}: {}", r.stdout);
        assert_eq!(r.json["error"], "invalid_argument", "{bad:?}");
        assert!(r.json["message"].as_str().unwrap().contains("--role"), "{bad:?}");
    }
    let r = add(dir.path(), "c-1", "clerk,janitor", Some("480172"));
    assert!(r.json["message"].as_str().unwrap().contains("janitor"));
    // An update to unknown roles changes nothing either.
    let r = add(dir.path(), "a-1", "superuser", None);
    assert_eq!(r.code, 1);
    let roster = list(dir.path(), COMMUNE);
    let ids: Vec<&str> = roster.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a-1", "b-1"]);
    assert_eq!(roles(&roster[0]), ["clerk", "registrar"]);

    // The library type.
    let r = Roles::parse("clerk,verifier,registrar").unwrap();
    assert!(Role::ALL.into_iter().all(|role| r.contains(role)));
    assert!(Roles::parse("clerk,janitor").is_err());
}

#[test]
fn a_pin_refused_by_the_policy_is_named_without_being_repeated() {
    let dir = server_dir();
    for (pin, why) in [
        ("111111", "one digit repeated"),
        ("123456", "straight run"),
        ("987654", "straight run"),
        ("98765", "6 to 12 digits"),
        ("1234567890123", "6 to 12 digits"),
        ("48017a", "digits 0 to 9"),
    ] {
        let r = add(dir.path(), "clerk-01", "clerk", Some(pin));
        assert_eq!(r.code, 1, "{pin}");
        assert_eq!(r.json["error"], "invalid_argument");
        let message = r.json["message"].as_str().unwrap();
        assert!(message.contains("CRVS_PIN") && message.contains(why), "{message}");
        assert!(!r.stdout.contains(pin), "the PIN is not echoed on stdout");
        assert!(!r.stderr.contains(pin), "the PIN is not echoed on stderr");
    }
    // A new member needs a PIN at all.
    let r = add(dir.path(), "clerk-01", "clerk", None);
    assert_eq!(r.code, 1);
    assert!(r.json["message"].as_str().unwrap().contains("CRVS_PIN"));
    assert!(list(dir.path(), COMMUNE).is_empty());
}

#[test]
fn a_pin_is_never_stored_in_plain_form() {
    let dir = server_dir();
    let (first, second) = ("480172", "593018");
    let r = add(dir.path(), "clerk-01", "clerk", Some(first));
    assert!(!r.stdout.contains(first) && !r.stderr.contains(first));
    ok(r);
    // A PIN change and a role change, then a second member with the same
    // PIN: a fresh salt each time.
    ok(add(dir.path(), "clerk-01", "clerk,verifier", Some(second)));
    ok(add(dir.path(), "clerk-02", "clerk", Some(second)));

    let files = folder_bytes(dir.path());
    assert!(files.iter().any(|(name, _)| name.ends_with("server.db")));
    // The scan does see the roster: its hashes are in these files.
    assert!(files.iter().any(|(_, bytes)| contains(bytes, b"$argon2id$v=19$")));
    for (name, bytes) in &files {
        for pin in [first, second] {
            assert!(
                !contains(bytes, pin.as_bytes()),
                "{name} holds a PIN in plain form"
            );
        }
    }

    // What the roster holds: Argon2id PHC strings at the production cost,
    // each with its own salt, verifying only the current PIN.
    let server = Server::open(dir.path()).unwrap();
    let mut tx = server.storage().begin().unwrap();
    let one = tx.staff(COMMUNE, "clerk-01").unwrap().unwrap();
    let two = tx.staff(COMMUNE, "clerk-02").unwrap().unwrap();
    drop(tx);
    let (h1, h2) = (one.pin_hash.unwrap(), two.pin_hash.unwrap());
    assert!(h1.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h1}");
    assert_ne!(h1, h2, "the same PIN hashes differently for two people");
    assert!(staff::verify_pin(&Pin::new(second.into()), &h1).unwrap());
    assert!(staff::verify_pin(&Pin::new(second.into()), &h2).unwrap());
    assert!(!staff::verify_pin(&Pin::new(first.into()), &h1).unwrap());
}

#[test]
#[allow(non_snake_case)]
fn CLERK_01_and_clerk_01_are_one_person() {
    let dir = server_dir();
    ok(add(dir.path(), "CLERK-01", "clerk", Some("480172")));
    let hash_before = {
        let server = Server::open(dir.path()).unwrap();
        let mut tx = server.storage().begin().unwrap();
        tx.staff(COMMUNE, "clerk-01").unwrap().unwrap().pin_hash
    };
    // The other spelling updates the same person; without CRVS_PIN the
    // PIN stays as it was.
    let u = ok(add(dir.path(), "clerk-01", "verifier", None));
    assert_eq!(u["id"], "CLERK-01", "the id as first entered");
    assert_eq!(u["changes"], serde_json::json!(["roles_changed"]));
    let roster = list(dir.path(), COMMUNE);
    assert_eq!(roster.len(), 1);
    assert_eq!(roles(&roster[0]), ["verifier"]);
    let server = Server::open(dir.path()).unwrap();
    let mut tx = server.storage().begin().unwrap();
    assert_eq!(
        tx.staff(COMMUNE, "Clerk-01").unwrap().unwrap().pin_hash,
        hash_before
    );
    drop(tx);
    drop(server);
    // The same roles again change nothing and write no history.
    let same = ok(add(dir.path(), "Clerk-01", "verifier", None));
    assert_eq!(same["changes"], serde_json::json!([]));

    ok(staff(
        dir.path(),
        &["remove", "--commune", COMMUNE, "--id", "clerk-01"],
        None,
    ));
    let roster = list(dir.path(), COMMUNE);
    assert_eq!(roster.len(), 1);
    assert!(roster[0]["removed_at"].is_i64());
}

/// A server whose clock the test sets.
fn server_at(dir: &Path) -> (Server, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(1_764_300_000_000));
    let clock = now.clone();
    let server = Server::open_with_clock(dir, Arc::new(move || clock.load(Ordering::SeqCst))).unwrap();
    (server, now)
}

fn lib_add(server: &Server, id: &str, roles: &str, pin: Option<&str>) {
    let pin = pin.map(|p| Pin::new(p.to_string()));
    let a = staff::prepare_add(COMMUNE, id, roles, pin.as_ref(), Some("op-1")).unwrap();
    staff::add(server, &a).unwrap();
}

#[test]
fn staff_role_at_answers_from_the_history() {
    let dir = server_dir();
    let (server, now) = server_at(dir.path());
    let t0 = now.load(Ordering::SeqCst);
    let (t_add, t_change, t_remove, t_back) = (t0 + 1_000, t0 + 2_000, t0 + 3_000, t0 + 4_000);
    let at = |t: i64| server.storage().staff_role_at(COMMUNE, "clerk-01", t).unwrap();
    let clerk = Roles::of(&[Role::Clerk]);
    let clerk_registrar = Roles::of(&[Role::Clerk, Role::Registrar]);

    assert_eq!(at(t0), None, "before anyone was added");
    now.store(t_add, Ordering::SeqCst);
    lib_add(&server, "CLERK-01", "clerk", Some("480172"));
    assert_eq!(at(t_add - 1), None, "before adding");
    assert_eq!(at(t_add), Some(clerk), "from the moment of adding");
    assert_eq!(at(t_change - 1), Some(clerk));

    now.store(t_change, Ordering::SeqCst);
    lib_add(&server, "clerk-01", "clerk,registrar", None);
    assert_eq!(at(t_change - 1), Some(clerk), "the past keeps its roles");
    assert_eq!(at(t_change), Some(clerk_registrar), "after the role change");
    // A PIN change keeps the roles.
    now.store(t_change + 500, Ordering::SeqCst);
    lib_add(&server, "clerk-01", "clerk,registrar", Some("593018"));
    assert_eq!(at(t_change + 500), Some(clerk_registrar));

    now.store(t_remove, Ordering::SeqCst);
    staff::remove(&server, COMMUNE, "Clerk-01", Some("op-2")).unwrap();
    assert_eq!(
        at(t_remove - 1),
        Some(clerk_registrar),
        "on the roster until the removal"
    );
    assert_eq!(at(t_remove), None, "off the roster from the removal on");
    assert_eq!(at(t_back - 1), None);

    now.store(t_back, Ordering::SeqCst);
    lib_add(&server, "clerk-01", "verifier", Some("246813"));
    assert_eq!(at(t_back), Some(Roles::of(&[Role::Verifier])), "put back");
    assert_eq!(at(t_remove + 1), None, "the gap stays a gap");
    assert_eq!(at(t_add), Some(clerk));

    // Keys and raw ids alike; other communes and other people are not on
    // this roster.
    let s = server.storage();
    assert_eq!(s.staff_role_at(COMMUNE, "CLERK-01", t_add).unwrap(), Some(clerk));
    assert_eq!(s.staff_role_at(OTHER_COMMUNE, "clerk-01", t_back).unwrap(), None);
    assert_eq!(s.staff_role_at(COMMUNE, "clerk-02", t_back).unwrap(), None);
    // The write transaction answers the same.
    let mut tx = s.begin().unwrap();
    assert_eq!(
        tx.staff_role_at(COMMUNE, "clerk-01", t_change).unwrap(),
        Some(clerk_registrar)
    );
    assert_eq!(tx.staff_role_at(COMMUNE, "clerk-01", t_remove).unwrap(), None);
    drop(tx);

    // A clock set back never dates an event before the person's last one.
    now.store(t_back - 10_000, Ordering::SeqCst);
    staff::remove(&server, COMMUNE, "clerk-01", Some("op-2")).unwrap();
    let roster = server.storage().roster(COMMUNE).unwrap();
    assert_eq!(roster[0].removed_at_ms, Some(t_back));
}

#[test]
fn the_staff_history_is_append_only_and_names_the_operators() {
    let dir = server_dir();
    ok(add(dir.path(), "clerk-01", "clerk", Some("480172")));
    ok(add(dir.path(), "clerk-01", "clerk,verifier", Some("593018")));
    // Without --by, the operating-system user.
    ok(staff_env(
        dir.path(),
        &["remove", "--commune", COMMUNE, "--id", "clerk-01"],
        None,
        Some("op-default"),
    ));
    // An operator id that is not one is refused.
    let r = staff(
        dir.path(),
        &[
            "remove",
            "--commune",
            COMMUNE,
            "--id",
            "clerk-01",
            "--by",
            "two words",
        ],
        None,
    );
    assert_eq!((r.code, r.json["error"].as_str()), (1, Some("invalid_argument")));

    let conn = rusqlite::Connection::open(dir.path().join(crvs_server::DB_FILE)).unwrap();
    let history = |conn: &rusqlite::Connection| -> Vec<(String, String, String)> {
        let mut st = conn
            .prepare("SELECT event, roles, by_operator FROM staff_history ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let before = history(&conn);
    let expected: Vec<(String, String, String)> = [
        ("added", "clerk", "op-1"),
        ("pin_set", "clerk", "op-1"),
        ("roles_changed", "clerk,verifier", "op-1"),
        ("pin_set", "clerk,verifier", "op-1"),
        ("removed", "", "op-default"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(before, expected);

    for sql in [
        "UPDATE staff_history SET by_operator = 'someone-else'",
        "UPDATE staff_history SET event = 'added' WHERE event = 'removed'",
        "DELETE FROM staff_history WHERE event = 'removed'",
        "DELETE FROM staff_history",
    ] {
        let err = conn.execute(sql, []).expect_err(sql);
        assert!(
            err.to_string().contains("staff_history is append-only"),
            "{sql}: {err}"
        );
    }
    assert_eq!(history(&conn), before);
}

#[test]
fn a_commune_code_must_be_a_commune() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["1710", "17100300", "991003", "abcdef", ""] {
        let r = staff(
            dir.path(),
            &[
                "add",
                "--commune",
                bad,
                "--id",
                "clerk-01",
                "--role",
                "clerk",
                "--by",
                "op",
            ],
            Some("480172"),
        );
        assert_eq!(
            (r.code, r.json["error"].as_str()),
            (1, Some("invalid_argument")),
            "{bad:?}"
        );
        assert!(
            r.json["message"].as_str().unwrap().contains("--commune"),
            "{bad:?}"
        );
        let r = staff(dir.path(), &["list", "--commune", bad], None);
        assert_eq!(r.code, 1, "{bad:?}");
        let r = staff(
            dir.path(),
            &["remove", "--commune", bad, "--id", "clerk-01"],
            None,
        );
        assert_eq!(
            (r.code, r.json["error"].as_str()),
            (1, Some("invalid_argument")),
            "{bad:?}"
        );
    }
    // Refused before anything is written: no database was made.
    assert!(!dir.path().join(crvs_server::DB_FILE).exists());
}

/// Not an assertion on time: prints what hashing and verifying a PIN at
/// the production cost takes on this machine (`cargo test -p crvs-server
/// --test staff pin_hash_timing -- --nocapture`). Argon2 is built with
/// optimisations even in the test profile (see the workspace's
/// `Cargo.toml`).
#[test]
fn pin_hash_timing() {
    let pin = Pin::new("480172".into());
    let hash = staff::hash_pin(&pin).unwrap();
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        assert!(staff::verify_pin(&pin, &hash).unwrap());
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "PIN verify, Argon2id m={} KiB t={} p={}: median {:.1} ms, best {:.1} ms, worst {:.1} ms",
        PIN_HASH_PARAMS.m_cost,
        PIN_HASH_PARAMS.t_cost,
        PIN_HASH_PARAMS.p_cost,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}

#[test]
fn staff_commands_refuse_a_data_folder_without_a_server_and_make_none() {
    let parent = tempfile::tempdir().unwrap();
    let typo = parent.path().join("crvs-dta");
    let r = staff(
        &typo,
        &["add", "--commune", COMMUNE, "--id", "clerk-01", "--role", "clerk"],
        Some("480172"),
    );
    assert_eq!((r.code, r.json["error"].as_str()), (1, Some("invalid_argument")));
    assert!(r.json["message"].as_str().unwrap().contains("no server database"));
    assert!(!r.stdout.contains("480172") && !r.stderr.contains("480172"));
    for args in [
        &["list", "--commune", COMMUNE][..],
        &["remove", "--commune", COMMUNE, "--id", "clerk-01"],
    ] {
        let r = staff(&typo, args, None);
        assert_eq!(
            (r.code, r.json["error"].as_str()),
            (1, Some("invalid_argument")),
            "{args:?}"
        );
    }
    assert!(!typo.exists(), "no data folder was made");
}
