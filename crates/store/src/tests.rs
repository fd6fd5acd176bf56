use super::*;
use crate::txn::TXN_LOCK;
use std::fs::{self, File};
use std::io::Read;
use std::sync::Arc;
use std::sync::Mutex;

fn write_adapter(dir: &Path, tag: &str) -> std::io::Result<()> {
    fs::write(
        dir.join(ADAPTER_CONFIG),
        format!("{{\"r\": 4, \"peft_type\": \"LORA\", \"tag\": \"{tag}\"}}"),
    )?;
    fs::write(dir.join(ADAPTER_WEIGHTS), format!("weights-{tag}"))
}

fn read_tag(dir: &Path) -> String {
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    let w = fs::read_to_string(dir.join(ADAPTER_WEIGHTS)).unwrap();
    let tag = cfg["tag"].as_str().unwrap().to_string();
    assert_eq!(
        w,
        format!("weights-{tag}"),
        "config and weights from different saves"
    );
    tag
}

fn store() -> (tempfile::TempDir, LoraStore) {
    let t = tempfile::tempdir().unwrap();
    let s = LoraStore::open(t.path().join("loras")).unwrap();
    (t, s)
}

#[test]
fn validate_id_accepts_and_rejects() {
    assert_eq!(validate_id("user/coder-v1").unwrap(), "user/coder-v1");
    assert_eq!(validate_id("user/coder_v1.2/").unwrap(), "user/coder_v1.2");
    for bad in [
        "",
        "/",
        "../x",
        "a/../b",
        "a/..",
        "/etc/passwd",
        "a\0b",
        "a\\b",
        "a//b",
        ".hidden",
        "a/.state",
        "a b",
        "ü",
        "a/b?c",
    ] {
        let err = validate_id(bad).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidId { .. }),
            "{bad:?} gave {err}"
        );
    }
    assert!(validate_id(&"a".repeat(129)).is_err());
    assert!(validate_id(&["abc"; 200].join("/")).is_err());
}

#[test]
fn save_resolve_list_and_version() {
    let (_t, s) = store();
    assert!(!s.exists("u/a").unwrap());
    assert_eq!(s.version("u/a").unwrap(), 0);
    let v = s.save_atomic("u/a", |d| write_adapter(d, "one")).unwrap();
    assert_eq!(v, 1);
    let r = s.resolve("u/a").unwrap();
    assert_eq!(r.id, "u/a");
    assert_eq!(r.alias, None);
    assert_eq!(read_tag(&r.dir), "one");
    let v = s.save_atomic("u/a", |d| write_adapter(d, "two")).unwrap();
    assert_eq!(v, 2);
    assert_eq!(s.version("u/a").unwrap(), 2);
    assert_eq!(read_tag(&s.resolve("u/a").unwrap().dir), "two");
    // nothing left in the staging area
    assert_eq!(
        fs::read_dir(s.root().join(TMP_DIR_NAME)).unwrap().count(),
        0
    );

    s.save_atomic("v/b", |d| write_adapter(d, "b")).unwrap();
    s.set_alias("v/b-latest", "v/b").unwrap();
    assert_eq!(s.list("").unwrap(), vec!["u/a", "v/b", "v/b-latest"]);
    assert_eq!(s.list("v/").unwrap(), vec!["v/b", "v/b-latest"]);
    assert_eq!(s.list("/u").unwrap(), vec!["u/a"]);
    assert!(s.list("../").unwrap().is_empty());
    let r = s.resolve("v/b-latest").unwrap();
    assert_eq!(r.id, "v/b");
    assert_eq!(r.alias.as_deref(), Some("v/b-latest"));
    assert!(matches!(s.resolve("v/nope"), Err(StoreError::NotFound(_))));
    assert!(matches!(
        s.resolve("../x"),
        Err(StoreError::InvalidId { .. })
    ));
}

#[test]
fn hand_copied_folder_is_an_adapter_and_dangling_alias_is_hidden() {
    let (_t, s) = store();
    let d = s.root().join("hand/made");
    fs::create_dir_all(&d).unwrap();
    write_adapter(&d, "hand").unwrap();
    assert!(s.exists("hand/made").unwrap());
    assert_eq!(s.version("hand/made").unwrap(), 0);
    // an alias whose target vanished is neither listed nor resolved
    fs::write(
        s.root().join(ALIASES_FILE_NAME),
        r#"{"x/gone-latest": "x/gone", "/hand/alias/": "hand/made"}"#,
    )
    .unwrap();
    assert_eq!(s.list("").unwrap(), vec!["hand/alias", "hand/made"]);
    assert!(matches!(
        s.resolve("x/gone-latest"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.resolve("hand/alias").unwrap().id, "hand/made");
}

#[test]
fn failed_writer_changes_nothing() {
    let (_t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "one")).unwrap();
    let err = s
        .save_atomic("u/a", |d| -> std::io::Result<()> {
            write_adapter(d, "half")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Write(_)), "{err}");
    assert_eq!(read_tag(&s.resolve("u/a").unwrap().dir), "one");
    assert_eq!(s.version("u/a").unwrap(), 1);
    // a writer that forgets the config is refused
    let err = s
        .save_atomic("u/b", |d| fs::write(d.join(ADAPTER_WEIGHTS), b"w"))
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidAdapter { .. }), "{err}");
    assert!(!s.exists("u/b").unwrap());
    assert_eq!(
        fs::read_dir(s.root().join(TMP_DIR_NAME)).unwrap().count(),
        0
    );
}

const ALL_POINTS: [FaultPoint; 3] = [
    FaultPoint::Staged,
    FaultPoint::MovedAside,
    FaultPoint::Swapped,
];

/// A store holding adapter `u/a` tagged "old".
fn store_with_old_adapter() -> (tempfile::TempDir, LoraStore) {
    let (t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "old")).unwrap();
    (t, s)
}

fn crash_at(s: &LoraStore, point: FaultPoint) {
    s.set_fault_hook(Some(Arc::new(move |p, _| p == point)));
}

#[test]
fn crash_between_stage_and_rename_keeps_old_adapter() {
    for point in ALL_POINTS {
        let (_t, s) = store_with_old_adapter();
        crash_at(&s, point);
        let err = s
            .save_atomic("u/a", |d| write_adapter(d, "new"))
            .unwrap_err();
        assert!(matches!(err, StoreError::InjectedFault(p) if p == point));
        if point == FaultPoint::MovedAside {
            // mid-swap the id is empty: the old folder sits aside in the journal
            assert!(!s.root().join("u/a").exists());
        }
        // "restart": a fresh open repairs the root
        let s2 = LoraStore::open(s.root()).unwrap();
        let tag = read_tag(&s2.resolve("u/a").unwrap().dir);
        match point {
            FaultPoint::Swapped => assert_eq!(tag, "new"),
            _ => assert_eq!(tag, "old"),
        }
        assert_eq!(
            fs::read_dir(s2.root().join(TMP_DIR_NAME)).unwrap().count(),
            0,
            "journal cleaned at {point:?}"
        );
        // and the store works normally afterwards
        s2.save_atomic("u/a", |d| write_adapter(d, "after"))
            .unwrap();
        assert_eq!(read_tag(&s2.resolve("u/a").unwrap().dir), "after");
    }
}

#[test]
fn another_process_opening_mid_save_leaves_the_live_transaction_alone() {
    for point in ALL_POINTS {
        let (_t, s) = store_with_old_adapter();
        // A second opener (another API process, `claas init`) arrives at `point`; its recovery
        // must not mistake this live save for a crashed one.
        let root = s.root().to_path_buf();
        let opened = Arc::new(Mutex::new(None));
        let seen = opened.clone();
        s.set_fault_hook(Some(Arc::new(move |p, _| {
            if p == point {
                *seen.lock().unwrap() = Some(LoraStore::open(&root).is_ok());
            }
            false
        })));
        s.save_atomic("u/a", |d| write_adapter(d, "new")).unwrap();
        assert_eq!(*opened.lock().unwrap(), Some(true), "{point:?}");
        assert_eq!(read_tag(&s.resolve("u/a").unwrap().dir), "new", "{point:?}");
        assert_eq!(
            fs::read_dir(s.root().join(TMP_DIR_NAME)).unwrap().count(),
            0,
            "{point:?}"
        );
    }
}

#[test]
fn adapter_lock_is_exclusive_across_openers() {
    let (_t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "x")).unwrap();
    let other = LoraStore::open(s.root()).unwrap();
    let held = s.try_lock_adapter("u/a").unwrap().expect("free at first");
    assert!(other.try_lock_adapter("u/a").unwrap().is_none());
    assert!(s.try_lock_adapter("u/a").unwrap().is_none());
    // other adapters are independent
    assert!(other.try_lock_adapter("u/b").unwrap().is_some());
    drop(held);
    assert!(other.try_lock_adapter("u/a").unwrap().is_some());
    assert!(s.try_lock_adapter("../x").is_err());
}

#[test]
fn crash_on_first_save_leaves_nothing_half_written() {
    let (_t, s) = store();
    crash_at(&s, FaultPoint::Staged);
    assert!(s.save_atomic("u/new", |d| write_adapter(d, "x")).is_err());
    let s2 = LoraStore::open(s.root()).unwrap();
    assert!(!s2.exists("u/new").unwrap());
    assert!(s2.list("").unwrap().is_empty());
}

#[test]
fn versioned_saves_and_latest_alias() {
    let (_t, s) = store();
    let init = s
        .save_versioned("u/bot", Some("init"), true, |d| write_adapter(d, "init"))
        .unwrap();
    assert_eq!(init.id, "u/bot-init");
    assert_eq!(init.latest_alias.as_deref(), Some("u/bot-latest"));
    assert_eq!(s.resolve("u/bot-latest").unwrap().id, "u/bot-init");

    // distilling from the alias keeps the base stable and moves the alias
    let a = s
        .save_versioned("u/bot-latest", None, true, |d| write_adapter(d, "a"))
        .unwrap();
    let b = s
        .save_versioned("u/bot-latest", None, true, |d| write_adapter(d, "b"))
        .unwrap();
    assert!(a.id.starts_with("u/bot-20"), "{}", a.id);
    assert_ne!(a.id, b.id, "same-second saves must not collide");
    assert_eq!(s.resolve("u/bot-latest").unwrap().id, b.id);
    assert_eq!(read_tag(&s.resolve(&a.id).unwrap().dir), "a");
    assert_eq!(s.list("u/").unwrap().len(), 4);
}

#[test]
fn alias_rules() {
    let (_t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "a")).unwrap();
    assert!(matches!(
        s.set_alias("u/x", "u/missing"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.set_alias("u/a", "u/a"),
        Err(StoreError::Alias { .. })
    ));
    s.save_atomic("u/b", |d| write_adapter(d, "b")).unwrap();
    assert!(matches!(
        s.set_alias("u/b", "u/a"),
        Err(StoreError::Alias { .. })
    ));
    s.set_alias("u/x", "u/a").unwrap();
    assert!(s.remove_alias("u/x").unwrap());
    assert!(!s.remove_alias("u/x").unwrap());
    // a corrupt alias file is reported, never overwritten
    fs::write(s.root().join(ALIASES_FILE_NAME), "not json").unwrap();
    assert!(matches!(
        s.set_alias("u/y", "u/a"),
        Err(StoreError::AliasFile { .. })
    ));
    assert_eq!(
        fs::read_to_string(s.root().join(ALIASES_FILE_NAME)).unwrap(),
        "not json"
    );
}

#[test]
fn nested_adapters_refused() {
    let (_t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "a")).unwrap();
    assert!(matches!(
        s.save_atomic("u/a/inner", |d| write_adapter(d, "i")),
        Err(StoreError::InvalidId { .. })
    ));
    s.save_atomic("w/outer/inner", |d| write_adapter(d, "i"))
        .unwrap();
    assert!(matches!(
        s.save_atomic("w/outer", |d| write_adapter(d, "o")),
        Err(StoreError::InvalidId { .. })
    ));
    assert_eq!(read_tag(&s.resolve("w/outer/inner").unwrap().dir), "i");
}

#[test]
fn side_state_lives_beside_and_is_optional() {
    let (_t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "a")).unwrap();
    assert!(s.load_state("u/a", "optimizer").unwrap().is_none());
    s.save_state("u/a", "optimizer", |d| fs::write(d.join("m.bin"), b"m1"))
        .unwrap();
    let p = s.load_state("u/a", "optimizer").unwrap().unwrap();
    assert_eq!(fs::read(p.join("m.bin")).unwrap(), b"m1");
    assert!(p.starts_with(s.root().join(STATE_DIR_NAME)));
    s.save_state("u/a", "optimizer", |d| fs::write(d.join("m.bin"), b"m2"))
        .unwrap();
    assert_eq!(fs::read(p.join("m.bin")).unwrap(), b"m2");
    // state never shows up as an adapter nor inside the adapter folder / export
    assert_eq!(s.list("").unwrap(), vec!["u/a"]);
    let (_, zip) = s.export_zip("u/a").unwrap();
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    assert_eq!(archive.len(), 2);
    s.clear_state("u/a", "optimizer").unwrap();
    assert!(s.load_state("u/a", "optimizer").unwrap().is_none());
    assert!(s
        .save_state("u/a", "../x", |_| Ok::<(), std::io::Error>(()))
        .is_err());
    // the store's own side state cannot be overwritten through the generic API
    for reserved in ["lock", "version"] {
        assert!(s
            .save_state("u/a", reserved, |_| Ok::<(), std::io::Error>(()))
            .is_err());
        assert!(s.clear_state("u/a", reserved).is_err());
    }
}

#[test]
fn recovery_touches_only_dead_writers_folders() {
    let (_t, s) = store_with_old_adapter();
    let tmp = s.root().join(TMP_DIR_NAME);
    // A live writer mid-swap in another process: its old folder is aside, the id is empty.
    let live = tmp.join("txn-live");
    fs::create_dir_all(&live).unwrap();
    fs::rename(s.root().join("u/a"), live.join("old")).unwrap();
    fs::write(live.join("target"), "u/a").unwrap();
    let held = File::create(live.join(TXN_LOCK)).unwrap();
    held.lock().unwrap();
    // A writer that has created its folder but not locked it yet, and a finished one.
    fs::create_dir_all(tmp.join("pre-young")).unwrap();
    fs::create_dir_all(tmp.join("del-done/new")).unwrap();

    LoraStore::open(s.root()).unwrap();
    assert!(
        live.join("old").is_dir(),
        "a live transaction was recovered"
    );
    assert!(!s.root().join("u/a").exists());
    assert!(tmp.join("pre-young").is_dir());
    assert!(!tmp.join("del-done").exists());

    // The writer dies: the next opener puts the old folder back.
    drop(held);
    let s2 = LoraStore::open(s.root()).unwrap();
    assert_eq!(read_tag(&s2.resolve("u/a").unwrap().dir), "old");
    assert!(!live.exists());
}

#[test]
fn export_zip_has_the_peft_files() {
    let (_t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "z")).unwrap();
    s.set_alias("u/a-latest", "u/a").unwrap();
    let (resolved, bytes) = s.export_zip("u/a-latest").unwrap();
    assert_eq!(resolved.id, "u/a");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = archive.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, vec![ADAPTER_CONFIG, ADAPTER_WEIGHTS]);
    let mut w = String::new();
    archive
        .by_name(ADAPTER_WEIGHTS)
        .unwrap()
        .read_to_string(&mut w)
        .unwrap();
    assert_eq!(w, "weights-z");
    assert!(matches!(
        s.export_zip("u/none"),
        Err(StoreError::NotFound(_))
    ));
}
