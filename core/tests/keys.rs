//! Keys that resist a stolen tablet: the Argon2id setting rises on unlock,
//! the passphrase can change, weak passphrases are refused. Real stores in
//! temporary folders; the settings are cheap ones except where the
//! production setting itself is the point.

mod common;

use common::*;
use crvs_core::crypto::{DataKey, KdfParams, WrappedKey, aad};
use crvs_core::{Error, Passphrase, Registrar, store};

/// A cheap setting above `INSECURE_FOR_TESTS`, standing for "a later
/// build's production setting".
const RAISED: KdfParams = KdfParams {
    m_cost: 256,
    t_cost: 2,
    p_cost: 1,
};

fn pass() -> Passphrase {
    PASSPHRASE.into()
}

fn stored_key(dir: &std::path::Path) -> WrappedKey {
    let conn = store::open(dir, false).unwrap();
    store::read_wrapped_key(&conn).unwrap()
}

#[test]
fn a_store_opened_by_a_build_with_a_stronger_setting_is_rewrapped_and_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let r = new_store(dir.path());
        assert_eq!(r.kdf_params().unwrap(), KdfParams::INSECURE_FOR_TESTS);
        r.register_birth(&sok_dara(), "clerk").unwrap()
    };
    let before = stored_key(dir.path());

    let r = Registrar::open_with_kdf(dir.path(), &pass(), RAISED).unwrap();
    assert_eq!(r.kdf_params().unwrap(), RAISED);
    assert_eq!(r.record(&id).unwrap().id, id);
    drop(r);
    let after = stored_key(dir.path());
    assert_eq!(after.params, RAISED);
    assert_ne!(after.salt, before.salt, "the re-wrap draws a new salt");
    assert_ne!(after.sealed, before.sealed);

    // An older build (a cheaper setting) opens it and does not lower it.
    let r = Registrar::open_with_kdf(dir.path(), &pass(), KdfParams::INSECURE_FOR_TESTS).unwrap();
    assert_eq!(r.kdf_params().unwrap(), RAISED);
    assert_eq!(r.list().unwrap().len(), 1);
    drop(r);
    assert_eq!(
        stored_key(dir.path()),
        after,
        "opening at the same or a lower setting writes nothing"
    );

    // A wrong passphrase still fails with the clear error, and writes nothing.
    let err = Registrar::open_with_kdf(dir.path(), &"not the passphrase".into(), RAISED).unwrap_err();
    assert!(matches!(err, Error::WrongPassphrase), "{err:?}");
    assert_eq!(
        err.to_string(),
        "wrong passphrase: the store could not be unlocked"
    );
    assert_eq!(stored_key(dir.path()), after);
}

#[test]
fn a_setting_with_more_memory_but_fewer_passes_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let more_memory = KdfParams {
        m_cost: 512,
        t_cost: 1,
        p_cost: 1,
    };
    drop(Registrar::init_with_kdf(dir.path(), &pass(), COMMUNE, more_memory).unwrap());
    let r = Registrar::open_with_kdf(dir.path(), &pass(), RAISED).unwrap();
    assert_eq!(r.kdf_params().unwrap(), more_memory);
}

#[test]
fn a_store_made_with_the_previous_production_setting_rises_to_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    drop(Registrar::init_with_kdf(dir.path(), &pass(), COMMUNE, KdfParams::BEFORE_2026_12).unwrap());
    assert_eq!(stored_key(dir.path()).params, KdfParams::BEFORE_2026_12);
    let r = Registrar::open(dir.path(), &pass()).unwrap();
    assert_eq!(r.kdf_params().unwrap(), KdfParams::PRODUCTION);
    drop(r);
    assert_eq!(stored_key(dir.path()).params.encode(), "argon2id;m=65536;t=2;p=1");
    Registrar::open(dir.path(), &pass()).unwrap();
}

#[test]
fn the_wrapped_key_is_replaced_only_if_it_is_still_the_one_read() {
    let dir = tempfile::tempdir().unwrap();
    drop(new_store(dir.path()));
    let current = stored_key(dir.path());
    let replacement = WrappedKey {
        params: RAISED,
        salt: vec![7; 16],
        sealed: vec![1; 57],
    };
    let stale = WrappedKey {
        salt: vec![9; 16],
        ..current.clone()
    };
    let mut conn = store::open(dir.path(), false).unwrap();
    // Writes need the store's key (every row carries a MAC under it).
    let key = DataKey::unwrap(&pass(), &current, &aad("meta", b"", "wrapped_data_key")).unwrap();
    crvs_core::integrity::register(&conn, &key).unwrap();
    let tx = conn.transaction().unwrap();
    assert!(!store::replace_wrapped_key(&tx, &stale, &replacement).unwrap());
    tx.commit().unwrap();
    assert_eq!(store::read_wrapped_key(&conn).unwrap(), current);
    let tx = conn.transaction().unwrap();
    assert!(store::replace_wrapped_key(&tx, &current, &replacement).unwrap());
    tx.commit().unwrap();
    assert_eq!(store::read_wrapped_key(&conn).unwrap(), replacement);
}

#[test]
fn init_refuses_a_weak_passphrase_with_a_reason_that_does_not_repeat_it() {
    let dir = tempfile::tempdir().unwrap();
    for weak in ["letmein123", "171003171003", "crvs2026"] {
        let err = Registrar::init_with_kdf(dir.path(), &weak.into(), COMMUNE, KdfParams::INSECURE_FOR_TESTS)
            .unwrap_err();
        let Error::WeakPassphrase(reason) = &err else {
            panic!("expected WeakPassphrase for {weak}, got {err:?}");
        };
        assert!(!reason.is_empty());
        assert_eq!(err.code(), "weak_passphrase");
        let shown = format!("{err} {}", err.hint());
        assert!(!shown.contains(weak), "the error repeats the passphrase: {shown}");
        assert!(
            !dir.path().join("crvs.db").exists(),
            "a refused init created a store"
        );
    }
    // The production entry point checks too.
    assert!(matches!(
        Registrar::init(dir.path(), &"letmein123".into(), COMMUNE),
        Err(Error::WeakPassphrase(_))
    ));
}

#[test]
fn a_changed_passphrase_opens_the_store_and_the_old_one_no_longer_does() {
    let dir = tempfile::tempdir().unwrap();
    let new: Passphrase = "rice fields after the monsoon rains".into();
    let id = {
        let r = new_store(dir.path());
        let id = r.register_birth(&sok_dara(), "clerk").unwrap();
        let before = stored_key(dir.path());
        r.change_passphrase(&pass(), &new).unwrap();
        let after = stored_key(dir.path());
        assert_ne!(after.salt, before.salt, "a new salt");
        // The store's setting was cheap and so is this build's: kept.
        assert_eq!(after.params, KdfParams::INSECURE_FOR_TESTS);
        // The open registrar goes on working with the same data key.
        assert_eq!(r.record(&id).unwrap().id, id);
        id
    };
    let err = Registrar::open_with_kdf(dir.path(), &pass(), KdfParams::INSECURE_FOR_TESTS).unwrap_err();
    assert!(matches!(err, Error::WrongPassphrase), "{err:?}");
    let r = Registrar::open_with_kdf(dir.path(), &new, KdfParams::INSECURE_FOR_TESTS).unwrap();
    assert_eq!(r.record(&id).unwrap().id, id);
}

#[test]
fn a_passphrase_change_is_refused_without_the_old_passphrase_or_with_a_weak_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let r = new_store(dir.path());
    let before = stored_key(dir.path());
    let strong: Passphrase = "rice fields after the monsoon rains".into();

    let err = r
        .change_passphrase(&"not the passphrase".into(), &strong)
        .unwrap_err();
    assert!(matches!(err, Error::WrongPassphrase), "{err:?}");

    let err = r.change_passphrase(&pass(), &"letmein123".into()).unwrap_err();
    assert!(matches!(err, Error::WeakPassphrase(_)), "{err:?}");
    assert!(!err.to_string().contains("letmein123"));

    let err = r.change_passphrase(&pass(), &pass()).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");

    assert_eq!(stored_key(dir.path()), before, "a refused change wrote something");
    drop(r);
    Registrar::open_with_kdf(dir.path(), &pass(), KdfParams::INSECURE_FOR_TESTS).unwrap();
}

#[test]
fn a_passphrase_change_never_lowers_the_stored_setting() {
    let dir = tempfile::tempdir().unwrap();
    drop(Registrar::init_with_kdf(dir.path(), &pass(), COMMUNE, RAISED).unwrap());
    // An older build, whose own setting is cheaper, changes the passphrase.
    let r = Registrar::open_with_kdf(dir.path(), &pass(), KdfParams::INSECURE_FOR_TESTS).unwrap();
    let new: Passphrase = "rice fields after the monsoon rains".into();
    r.change_passphrase(&pass(), &new).unwrap();
    assert_eq!(stored_key(dir.path()).params, RAISED);
    drop(r);
    Registrar::open_with_kdf(dir.path(), &new, KdfParams::INSECURE_FOR_TESTS).unwrap();
}
