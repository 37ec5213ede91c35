//! Durable freezes, lookup and freeze by raw credential.

use std::{fs, path::PathBuf};

use base64::{engine::general_purpose::STANDARD, Engine as _};

use super::*;
use crate::{
    identity::CredentialInputError,
    score::HealthState,
    session::testutil::{at, ExchangeBuilder},
};

fn tmpdir(name: &str) -> PathBuf {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "observer-freeze-test-{}-{name}-{:02x}{:02x}{:02x}{:02x}",
        std::process::id(),
        r[0],
        r[1],
        r[2],
        r[3]
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn table_in(dir: Option<&PathBuf>) -> SessionTable {
    let mut t = SessionTable::new(
        SessionTableConfig {
            state_dir: dir.cloned(),
            ..Default::default()
        },
        FingerprintKey::random().unwrap(),
    );
    t.open_state().unwrap();
    t
}

fn obs(t: &mut SessionTable, b: ExchangeBuilder) {
    let ex = b.build();
    t.observe(&ex, ex.started_at);
}

fn ids(t: &SessionTable) -> Vec<String> {
    t.list(&ListQuery::default())
        .into_iter()
        .filter(|s| s.kind != "network" && s.kind != "route")
        .map(|s| s.id)
        .collect()
}

fn unhealthy_on_next_use(t: &mut SessionTable, b: ExchangeBuilder, when: f64) {
    obs(t, b.at(when));
    t.score(at(when + 1.0));
    let s = t
        .list(&ListQuery::default())
        .into_iter()
        .find(|s| s.reasons.contains(&score::Reason::FrozenCredential))
        .expect("a frozen_credential session");
    assert_eq!(s.state, HealthState::Unhealthy);
}

#[test]
fn freeze_survives_rotate_key_in_memory() {
    let mut t = table_in(None);
    obs(&mut t, ExchangeBuilder::new().bearer("DURABLE-TOK-1"));
    let id = ids(&t)[0].clone();
    assert_eq!(t.freeze(&id), Ok(true));
    for _ in 0..3 {
        assert_eq!(t.rotate_key().unwrap(), 0);
    }
    assert!(t.is_empty());
    unhealthy_on_next_use(&mut t, ExchangeBuilder::new().bearer("DURABLE-TOK-1"), 5.0);
    // Another token is not frozen.
    obs(&mut t, ExchangeBuilder::new().bearer("OTHER-TOK").at(7.0));
    assert_eq!(t.counters().frozen_uses, 1);
    // Unfreeze by durable id.
    let frz = t.frozen()[0].id.clone();
    assert!(frz.starts_with("frz_"));
    assert_eq!(t.unfreeze(&frz), Ok(true));
    assert!(t.frozen().is_empty());
    assert_eq!(t.unfreeze(&frz), Ok(false));
}

#[test]
fn durable_store_round_trip_and_modes() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tmpdir("store");
    let mut t = table_in(Some(&dir));
    obs(&mut t, ExchangeBuilder::new().bearer("STORED-TOKEN-SECRET"));
    let id = ids(&t)[0].clone();
    t.freeze(&id).unwrap();
    let frz = t.frozen()[0].id.clone();
    for f in [durable::FREEZE_KEY_FILE, durable::FROZEN_FILE] {
        let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let dmode = fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(dmode & 0o777, 0o700);
    let text = fs::read_to_string(dir.join(durable::FROZEN_FILE)).unwrap();
    assert!(
        !text.contains("STORED-TOKEN-SECRET") && !text.contains(&id),
        "{text}"
    );
    assert!(!dir.join("frozen.json.tmp").exists());
    drop(t);

    // A restart: a new fingerprint key, the same state directory.
    let mut t = table_in(Some(&dir));
    let f = t.frozen();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].id, frz);
    assert!(f[0].fingerprint.is_none());
    unhealthy_on_next_use(
        &mut t,
        ExchangeBuilder::new().bearer("STORED-TOKEN-SECRET"),
        3.0,
    );
    assert_eq!(
        t.frozen()[0].fingerprint.as_ref().map(|f| f.to_string()),
        Some(ids(&t)[0].clone())
    );

    // Unfreeze by the current fingerprint is saved too.
    let fp = ids(&t)[0].clone();
    assert_eq!(t.unfreeze(&fp), Ok(true));
    drop(t);
    assert!(table_in(Some(&dir)).frozen().is_empty());

    // A corrupt file is an error at start, naming the file.
    fs::write(dir.join(durable::FROZEN_FILE), "{not json").unwrap();
    let mut t = SessionTable::new(
        SessionTableConfig {
            state_dir: Some(dir.clone()),
            ..Default::default()
        },
        FingerprintKey::random().unwrap(),
    );
    let err = t.open_state().unwrap_err().to_string();
    assert!(
        err.contains("frozen.json") && err.contains("corrupt"),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lookup_each_kind() {
    let mut t = table_in(None);
    obs(&mut t, ExchangeBuilder::new().bearer("LOOK-TOK"));
    obs(
        &mut t,
        ExchangeBuilder::new()
            .header("x-api-key", "LOOK-KEY")
            .at(1.0),
    );
    obs(
        &mut t,
        ExchangeBuilder::new()
            .header("cookie", "session=LOOK-CK")
            .at(2.0),
    );
    let basic = format!("Basic {}", STANDARD.encode("erin:LOOK-PW"));
    obs(
        &mut t,
        ExchangeBuilder::new()
            .header("authorization", &basic)
            .at(3.0),
    );
    let found = |input: &str| -> Vec<(String, String)> {
        t.lookup_credential(input)
            .unwrap()
            .matches
            .into_iter()
            .flat_map(|m| {
                let kind = m.kind.to_string();
                m.sessions.into_iter().map(move |s| (kind.clone(), s.id))
            })
            .collect()
    };
    let one = |input: &str, prefix: &str| {
        let f = found(input);
        assert_eq!(f.len(), 1, "{input}: {f:?}");
        assert!(f[0].1.starts_with(prefix), "{input}: {f:?}");
    };
    one("LOOK-TOK", "tok_");
    one("Bearer LOOK-TOK", "tok_");
    one("Authorization: Bearer LOOK-TOK\n", "tok_");
    one("LOOK-KEY", "key_");
    one("LOOK-CK", "ck_");
    one(&basic, "usr_");
    one("erin:LOOK-PW", "usr_");
    one("erin:another-password", "usr_");
    assert!(found("NOT-SEEN").is_empty());
}

#[test]
fn bad_credentials_refused() {
    let mut t = table_in(None);
    for (input, err) in [
        ("", CredentialInputError::Empty),
        ("  \n", CredentialInputError::Empty),
        ("Bearer ", CredentialInputError::Empty),
        ("Authorization:", CredentialInputError::Empty),
        ("a\nb", CredentialInputError::MultiLine),
        ("Basic !!!", CredentialInputError::BadBasic),
        ("Basic bm9jb2xvbg==", CredentialInputError::BadBasic),
    ] {
        assert_eq!(
            t.lookup_credential(input).unwrap_err(),
            FreezeError::Credential(err.clone()),
            "{input:?}"
        );
        assert_eq!(
            t.freeze_credential(input).unwrap_err(),
            FreezeError::Credential(err),
            "{input:?}"
        );
    }
    let long = "x".repeat(crate::identity::MAX_CREDENTIAL + 1);
    assert_eq!(
        t.freeze_credential(&long).unwrap_err(),
        FreezeError::Credential(CredentialInputError::TooLong)
    );
    assert!(t.frozen().is_empty());
}

#[test]
fn freeze_by_credential_before_and_after_use() {
    let mut t = table_in(None);
    // Not seen yet: frozen under every kind it could be (token/key and cookie).
    let r = t.freeze_credential("FUTURE-TOKEN").unwrap();
    assert_eq!(r.changed, Some(true));
    assert_eq!(t.frozen().len(), 2);
    unhealthy_on_next_use(&mut t, ExchangeBuilder::new().bearer("FUTURE-TOKEN"), 1.0);
    assert_eq!(
        t.freeze_credential("FUTURE-TOKEN").unwrap().changed,
        Some(false)
    );
    assert_eq!(
        t.unfreeze_credential("FUTURE-TOKEN").unwrap().changed,
        Some(true)
    );
    assert!(t.frozen().is_empty());

    // Seen: frozen only as the kind it is used as.
    obs(
        &mut t,
        ExchangeBuilder::new()
            .header("cookie", "sessionid=LIVE-CK")
            .at(3.0),
    );
    let r = t.freeze_credential("LIVE-CK").unwrap();
    assert_eq!(t.frozen().len(), 1);
    assert_eq!(t.frozen()[0].kind.as_deref(), Some("cookie"));
    let m: Vec<_> = r
        .matches
        .iter()
        .filter(|m| !m.sessions.is_empty())
        .collect();
    assert_eq!(m.len(), 1);
    assert!(m[0].frozen && m[0].sessions[0].frozen);
    t.rotate_key().unwrap();
    unhealthy_on_next_use(
        &mut t,
        ExchangeBuilder::new().header("cookie", "sessionid=LIVE-CK"),
        5.0,
    );
}

#[test]
fn no_raw_credential_in_outputs() {
    let mut t = table_in(None);
    let basic = format!("Basic {}", STANDARD.encode("frank:SECRET-PW-9"));
    obs(&mut t, ExchangeBuilder::new().bearer("SECRET-TOK-9"));
    obs(
        &mut t,
        ExchangeBuilder::new()
            .header("authorization", &basic)
            .at(1.0),
    );
    let mut printed = String::new();
    for input in ["SECRET-TOK-9", basic.as_str(), "frank:SECRET-PW-9"] {
        let r = t.lookup_credential(input).unwrap();
        printed += &format!("{r:?}{}", serde_json::to_string(&r).unwrap());
        let r = t.freeze_credential(input).unwrap();
        printed += &format!("{r:?}{}", serde_json::to_string(&r).unwrap());
        let c = crate::identity::credential_candidates(input).unwrap();
        printed += &format!("{c:?}");
    }
    printed += &format!("{t:?}{:?}", t.frozen());
    printed += &serde_json::to_string(&t.frozen()).unwrap();
    for e in crate::identity::credential_candidates("").err().into_iter() {
        printed += &e.to_string();
    }
    for secret in ["SECRET-TOK-9", "SECRET-PW-9", "frank", &basic[6..]] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
}
