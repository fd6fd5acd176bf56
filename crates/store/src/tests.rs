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
fn open_sweeps_stray_temp_files_of_the_alias_map() {
    let (_t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "a")).unwrap();
    s.set_alias("u/a-latest", "u/a").unwrap();
    let fresh = format!("{}abc123", claas_fsatomic::temp_prefix(ALIASES_FILE_NAME));
    for stray in [fresh.as_str(), ".aliases.json.0123.tmp"] {
        fs::write(s.root().join(stray), "{").unwrap();
    }
    let s2 = LoraStore::open(s.root()).unwrap();
    assert_eq!(
        entry_names(s2.root()),
        vec![".aliases.json", ".state", ".tmp", "u"]
    );
    assert_eq!(s2.resolve("u/a-latest").unwrap().id, "u/a");
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

// ---- version history ----

/// Adapter files plus optimizer state, all tagged.
fn write_version(dir: &Path, tag: &str) -> std::io::Result<()> {
    write_adapter(dir, tag)?;
    fs::create_dir(dir.join("optimizer"))?;
    fs::write(dir.join("optimizer/m.bin"), format!("opt-{tag}"))
}

fn commit(s: &LoraStore, id: &str, tag: &str) -> Result<VersionInfo> {
    s.commit_version(id, serde_json::json!({ "tag": tag }), |d| {
        write_version(d, tag)
    })
}

fn entry_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

fn tmp_is_empty(s: &LoraStore) -> bool {
    let tmp = s.root().join(TMP_DIR_NAME);
    !tmp.exists() || fs::read_dir(tmp).unwrap().count() == 0
}

#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (fs::metadata(a).unwrap(), fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// What must hold after any crash + reopen: every listed version is loadable, the live folder
/// is loadable, plain, and one of the versions or the pre-crash adapter, aliases resolve.
fn assert_consistent(s: &LoraStore, id: &str, before: &str, ctx: &str) -> String {
    let versions = s.versions(id).unwrap();
    let mut tags = Vec::new();
    for v in &versions {
        assert!(v.dir.join(VERSION_META).is_file(), "{ctx}: {}", v.name);
        tags.push(read_tag(&v.dir));
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(v.dir.join(VERSION_META)).unwrap()).unwrap();
        assert_eq!(meta["version"], v.version, "{ctx}");
    }
    let live = s.resolve(id).unwrap().dir;
    let tag = read_tag(&live);
    assert!(
        tag == before || tags.contains(&tag),
        "{ctx}: live {tag:?} is neither {before:?} nor a version {tags:?}"
    );
    assert_eq!(
        entry_names(&live),
        vec![ADAPTER_CONFIG, ADAPTER_WEIGHTS],
        "{ctx}"
    );
    if let Some(n) = s.current_version(id).unwrap() {
        let cur = versions.iter().find(|v| v.version == n).unwrap();
        assert!(cur.current, "{ctx}");
        assert_eq!(read_tag(&cur.dir), tag, "{ctx}");
    }
    for (alias, target) in s.aliases().unwrap() {
        if target == id {
            assert_eq!(s.resolve(&alias).unwrap().id, id, "{ctx}");
        }
    }
    assert!(tmp_is_empty(s), "{ctx}: journal left");
    tag
}

#[test]
fn commits_chain_versions_and_rollback_restores_files_and_optimizer() {
    let (_t, s) = store_with_old_adapter();
    s.save_state("u/a", "optimizer", |d| {
        fs::write(d.join("m.bin"), b"opt-old")
    })
    .unwrap();
    s.set_alias("u/a-latest", "u/a").unwrap();
    assert!(s.versions("u/a").unwrap().is_empty());
    assert_eq!(s.current_version("u/a").unwrap(), None);
    assert_eq!(
        s.optimizer_dir("u/a").unwrap(),
        s.load_state("u/a", "optimizer").unwrap()
    );

    // through the alias, as /v1/feedback does
    for tag in ["a", "b", "c"] {
        let info = commit(&s, "u/a-latest", tag).unwrap();
        assert!(info.current);
        assert_eq!(info.id, "u/a");
        assert_eq!(info.meta, serde_json::json!({ "tag": tag }));
    }
    let vs = s.versions("u/a-latest").unwrap();
    let nums: Vec<u64> = vs.iter().map(|v| v.version).collect();
    assert_eq!(nums, vec![0, 1, 2, 3]);
    let parents: Vec<Option<u64>> = vs.iter().map(|v| v.parent).collect();
    assert_eq!(parents, vec![None, Some(0), Some(1), Some(2)]);
    assert_eq!(vs[0].meta, serde_json::json!({"kind": "snapshot"}));
    assert_eq!(read_tag(&vs[0].dir), "old");
    // the legacy optimizer state went into the snapshot
    assert_eq!(
        fs::read(vs[0].dir.join("optimizer/m.bin")).unwrap(),
        b"opt-old"
    );
    assert_eq!(vs[3].name, "u/a@v3");
    assert_eq!(vs[3].dir, s.root().join(".versions/u/a/v3"));
    assert!(chrono::DateTime::parse_from_rfc3339(&vs[3].created_utc).is_ok());
    assert_eq!(
        vs.iter().map(|v| v.current).collect::<Vec<_>>(),
        vec![false, false, false, true]
    );
    assert_eq!(s.current_version("u/a").unwrap(), Some(3));
    assert_eq!(s.version("u/a").unwrap(), 3);
    let live = s.root().join("u/a");
    assert_eq!(read_tag(&live), "c");
    assert_eq!(entry_names(&live), vec![ADAPTER_CONFIG, ADAPTER_WEIGHTS]);
    #[cfg(unix)]
    assert!(same_inode(
        &live.join(ADAPTER_WEIGHTS),
        &vs[3].dir.join(ADAPTER_WEIGHTS)
    ));
    let opt = s.optimizer_dir("u/a").unwrap().unwrap();
    assert_eq!(opt, vs[3].dir.join("optimizer"));
    // history is neither listed nor exported
    assert_eq!(s.list("").unwrap(), vec!["u/a", "u/a-latest"]);
    let (_, zip) = s.export_zip("u/a").unwrap();
    assert_eq!(
        zip::ZipArchive::new(std::io::Cursor::new(zip))
            .unwrap()
            .len(),
        2
    );

    let back = s.rollback("u/a-latest", 1).unwrap();
    assert!(back.current);
    assert_eq!(back.version, 1);
    assert_eq!(s.current_version("u/a").unwrap(), Some(1));
    for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        assert_eq!(
            fs::read(live.join(f)).unwrap(),
            fs::read(vs[1].dir.join(f)).unwrap()
        );
    }
    assert_eq!(entry_names(&live), vec![ADAPTER_CONFIG, ADAPTER_WEIGHTS]);
    let opt = s.optimizer_dir("u/a").unwrap().unwrap();
    assert_eq!(fs::read(opt.join("m.bin")).unwrap(), b"opt-a");
    // rolling back to the current version is a no-op
    assert_eq!(s.rollback("u/a", 1).unwrap().version, 1);
    assert!(matches!(
        s.rollback("u/a", 9),
        Err(StoreError::VersionNotFound { version: 9, .. })
    ));
    assert!(matches!(
        s.version_info("u/a", 9),
        Err(StoreError::VersionNotFound { .. })
    ));
    assert!(matches!(s.versions("u/none"), Err(StoreError::NotFound(_))));

    // a commit after a rollback continues the numbering and records where it came from
    let next = commit(&s, "u/a", "d").unwrap();
    assert_eq!((next.version, next.parent), (4, Some(1)));
    let again = s.version_info("u/a", 4).unwrap();
    assert_eq!(again, next);
    assert_eq!(read_tag(&live), "d");
    assert_eq!(s.versions("u/a").unwrap().len(), 5);
    // rollback reaches the pre-update state
    s.rollback("u/a", 0).unwrap();
    assert_eq!(read_tag(&live), "old");
    assert!(tmp_is_empty(&s));
}

#[test]
fn create_versioned_and_failed_writers() {
    let (_t, s) = store();
    let v0 = s
        .create_versioned("u/n", serde_json::json!({"init": true}), false, |d| {
            write_adapter(d, "init")
        })
        .unwrap();
    assert_eq!((v0.version, v0.parent, v0.current), (0, None, true));
    assert_eq!(read_tag(&s.resolve("u/n").unwrap().dir), "init");
    assert!(s.optimizer_dir("u/n").unwrap().is_none());
    assert!(matches!(
        s.create_versioned("u/n", serde_json::Value::Null, false, |d| {
            write_adapter(d, "x")
        }),
        Err(StoreError::AlreadyExists(_))
    ));
    // a failing writer or one without a config changes nothing
    let err = commit_err(&s, "u/n");
    assert!(matches!(err, StoreError::Write(_)), "{err}");
    let err = s
        .commit_version("u/n", serde_json::Value::Null, |d| {
            fs::write(d.join(ADAPTER_WEIGHTS), b"w")
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidAdapter { .. }), "{err}");
    assert_eq!(s.versions("u/n").unwrap().len(), 1);
    assert_eq!(read_tag(&s.resolve("u/n").unwrap().dir), "init");
    assert!(tmp_is_empty(&s));
    assert!(matches!(
        commit(&s, "u/missing", "x"),
        Err(StoreError::NotFound(_))
    ));

    // replacing an unversioned adapter keeps it as a snapshot first
    s.save_atomic("u/h", |d| write_adapter(d, "hand")).unwrap();
    let v = s
        .create_versioned("u/h", serde_json::Value::Null, true, |d| {
            write_adapter(d, "fresh")
        })
        .unwrap();
    assert_eq!((v.version, v.parent), (1, Some(0)));
    assert_eq!(read_tag(&s.version_info("u/h", 0).unwrap().dir), "hand");
    // replacing a versioned one: its current version is the parent
    let v = s
        .create_versioned("u/h", serde_json::Value::Null, true, |d| {
            write_adapter(d, "fresh2")
        })
        .unwrap();
    assert_eq!((v.version, v.parent), (2, Some(1)));
}

fn commit_err(s: &LoraStore, id: &str) -> StoreError {
    s.commit_version(id, serde_json::Value::Null, |d| -> std::io::Result<()> {
        write_adapter(d, "half")?;
        Err(std::io::Error::other("boom"))
    })
    .unwrap_err()
}

#[test]
fn save_atomic_over_history_and_the_version_number() {
    let (_t, s) = store();
    s.create_versioned("u/a", serde_json::Value::Null, false, |d| {
        write_adapter(d, "v0")
    })
    .unwrap();
    commit(&s, "u/a", "v1").unwrap();
    commit(&s, "u/a", "v2").unwrap();
    assert_eq!(s.version("u/a").unwrap(), 2);
    // an in-place save is no version; its counter never repeats a version number
    let n = s
        .save_atomic("u/a", |d| write_adapter(d, "manual"))
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(s.current_version("u/a").unwrap(), None);
    assert_eq!(s.version("u/a").unwrap(), 3);
    assert!(s.optimizer_dir("u/a").unwrap().is_none());
    // rolling back keeps the unversioned live folder as a snapshot
    s.rollback("u/a", 1).unwrap();
    let vs = s.versions("u/a").unwrap();
    assert_eq!(vs.len(), 4);
    assert_eq!(read_tag(&vs[3].dir), "manual");
    assert_eq!(vs[3].meta, serde_json::json!({"kind": "snapshot"}));
    assert_eq!(read_tag(&s.resolve("u/a").unwrap().dir), "v1");
}

#[test]
fn copy_fallback_finds_the_current_version_by_hint_and_content() {
    let (_t, s) = store();
    s.set_force_copy(true);
    s.create_versioned("u/c", serde_json::Value::Null, false, |d| {
        write_adapter(d, "zero")
    })
    .unwrap();
    commit(&s, "u/c", "one").unwrap();
    commit(&s, "u/c", "two").unwrap();
    let live = s.root().join("u/c");
    let v2 = s.version_info("u/c", 2).unwrap();
    #[cfg(unix)]
    assert!(!same_inode(
        &live.join(ADAPTER_WEIGHTS),
        &v2.dir.join(ADAPTER_WEIGHTS)
    ));
    assert!(v2.current);
    assert_eq!(
        fs::read_to_string(s.state_path("u/c", "current").unwrap()).unwrap(),
        "2"
    );
    s.rollback("u/c", 0).unwrap();
    assert_eq!(s.current_version("u/c").unwrap(), Some(0));
    assert_eq!(read_tag(&live), "zero");
    // a stale hint (crash right after the swap) is checked against the files
    crash_at(&s, FaultPoint::Swapped);
    assert!(s.rollback("u/c", 1).is_err());
    let s2 = LoraStore::open(s.root()).unwrap();
    assert_eq!(read_tag(&live), "one");
    assert_eq!(s2.current_version("u/c").unwrap(), Some(1));
    // and with the hint gone entirely
    fs::remove_file(s2.state_path("u/c", "current").unwrap()).unwrap();
    assert_eq!(s2.current_version("u/c").unwrap(), Some(1));
}

#[test]
fn retention_keeps_the_newest_versions() {
    let (_t, s) = store();
    s.set_retention(2);
    s.create_versioned("u/r", serde_json::Value::Null, false, |d| {
        write_adapter(d, "t0")
    })
    .unwrap();
    for i in 1..=4 {
        commit(&s, "u/r", &format!("t{i}")).unwrap();
    }
    let nums: Vec<u64> = s
        .versions("u/r")
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(nums, vec![3, 4]);
    assert_eq!(
        entry_names(&s.root().join(".versions/u/r")),
        vec!["v3", "v4"]
    );
    // numbers are never reused, and the parent may be a version that is gone
    s.rollback("u/r", 3).unwrap();
    s.set_retention(1);
    let v5 = commit(&s, "u/r", "t5").unwrap();
    assert_eq!((v5.version, v5.parent), (5, Some(3)));
    let nums: Vec<u64> = s
        .versions("u/r")
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(nums, vec![5]);
    s.set_retention(0); // clamped to 1
    commit(&s, "u/r", "t6").unwrap();
    assert_eq!(s.versions("u/r").unwrap().len(), 1);
    assert!(tmp_is_empty(&s));
}

#[test]
fn delete_removes_adapter_history_state_and_aliases() {
    let (_t, s) = store();
    s.create_versioned("u/d", serde_json::Value::Null, false, |d| {
        write_version(d, "d0")
    })
    .unwrap();
    commit(&s, "u/d", "d1").unwrap();
    s.save_state("u/d", "optimizer", |d| fs::write(d.join("m"), b"x"))
        .unwrap();
    s.set_alias("u/d-latest", "u/d").unwrap();
    s.set_alias("u/d-other", "u/d").unwrap();
    // a neighbour whose id shares the prefix stays
    s.create_versioned("u/dd", serde_json::Value::Null, false, |d| {
        write_adapter(d, "dd")
    })
    .unwrap();
    s.set_alias("u/dd-latest", "u/dd").unwrap();

    // deleting an alias removes just the alias
    assert!(s.delete("u/d-other").unwrap());
    assert!(s.exists("u/d").unwrap());
    assert!(!s.aliases().unwrap().contains_key("u/d-other"));

    let _held = s.try_lock_adapter("u/d").unwrap().unwrap();
    assert!(s.delete("u/d").unwrap());
    assert!(!s.exists("u/d").unwrap());
    assert!(!s.exists("u/d-latest").unwrap());
    assert_eq!(
        s.aliases().unwrap().into_iter().collect::<Vec<_>>(),
        vec![("u/dd-latest".to_string(), "u/dd".to_string())]
    );
    assert!(!s.root().join(".versions/u/d").exists());
    assert_eq!(entry_names(&s.state_dir("u/d").unwrap()), vec!["@lock"]);
    assert_eq!(s.list("").unwrap(), vec!["u/dd", "u/dd-latest"]);
    assert_eq!(s.versions("u/dd").unwrap().len(), 1);
    assert!(matches!(s.versions("u/d"), Err(StoreError::NotFound(_))));
    assert!(!s.delete("u/d").unwrap());
    assert!(!s.delete("u/nothing").unwrap());
    assert!(s.delete("../x").is_err());
    assert!(tmp_is_empty(&s));
    // the id can be used again, with fresh history
    let v = s
        .create_versioned("u/d", serde_json::Value::Null, false, |d| {
            write_adapter(d, "new")
        })
        .unwrap();
    assert_eq!((v.version, v.parent), (0, None));
}

#[test]
fn version_references() {
    assert_eq!(split_version_ref("u/a@v3"), ("u/a", Some(3)));
    assert_eq!(
        split_version_ref("openclaw-assistant-latest@v12"),
        ("openclaw-assistant-latest", Some(12))
    );
    for plain in [
        "u/a", "u/a@", "u/a@v", "u/a@3", "u/a@v1x", "u/a@v-1", "u/a@v+1",
    ] {
        assert_eq!(split_version_ref(plain), (plain, None), "{plain}");
    }
    assert_eq!(split_version_ref("a@b@v2"), ("a@b", Some(2)));
    assert!(validate_id("u/a@v1").is_err());

    let (_t, s) = store();
    s.create_versioned("u/a", serde_json::Value::Null, false, |d| {
        write_adapter(d, "r0")
    })
    .unwrap();
    commit(&s, "u/a", "r1").unwrap();
    s.set_alias("u/a-latest", "u/a").unwrap();
    let (r, v) = s.resolve_ref("u/a-latest@v0").unwrap();
    assert_eq!(v, Some(0));
    assert_eq!(r.id, "u/a");
    assert_eq!(r.alias.as_deref(), Some("u/a-latest"));
    assert_eq!(r.dir, s.root().join(".versions/u/a/v0"));
    assert_eq!(read_tag(&r.dir), "r0");
    let (r, v) = s.resolve_ref("u/a-latest").unwrap();
    assert_eq!((r.dir, v), (s.root().join("u/a"), None));
    assert!(matches!(
        s.resolve_ref("u/a@v7"),
        Err(StoreError::VersionNotFound { version: 7, .. })
    ));
    assert!(matches!(
        s.resolve_ref("u/a@x"),
        Err(StoreError::InvalidId { .. })
    ));
    assert!(matches!(
        s.resolve_ref("u/b@v0"),
        Err(StoreError::NotFound(_))
    ));
}

const COMMIT_POINTS: [FaultPoint; 8] = [
    FaultPoint::SnapshotTaken,
    FaultPoint::VersionStaged,
    FaultPoint::VersionCommitted,
    FaultPoint::Staged,
    FaultPoint::MovedAside,
    FaultPoint::Swapped,
    FaultPoint::HintWritten,
    FaultPoint::RetentionMoved,
];

/// Unversioned `u/a` ("old") with an alias, retention 2: the first commit snapshots, the
/// second runs retention.
fn store_for_crashes(copy: bool) -> (tempfile::TempDir, LoraStore) {
    let (t, s) = store_with_old_adapter();
    s.set_alias("u/a-latest", "u/a").unwrap();
    s.set_retention(2);
    s.set_force_copy(copy);
    (t, s)
}

#[test]
fn crash_anywhere_in_a_commit_leaves_a_consistent_root() {
    for copy in [false, true] {
        for point in COMMIT_POINTS {
            let ctx = format!("{point:?} copy={copy}");
            let (_t, s) = store_for_crashes(copy);
            crash_at(&s, point);
            let mut before = "old".to_string();
            let mut crashed = false;
            for i in 0..3 {
                match commit(&s, "u/a-latest", &format!("n{i}")) {
                    Ok(_) => before = format!("n{i}"),
                    Err(StoreError::InjectedFault(p)) => {
                        assert_eq!(p, point);
                        crashed = true;
                        break;
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
            assert!(crashed, "{ctx}: never reached");
            let s2 = LoraStore::open(s.root()).unwrap();
            s2.set_retention(2);
            s2.set_force_copy(copy);
            let live = assert_consistent(&s2, "u/a", &before, &ctx);
            if matches!(point, FaultPoint::Swapped | FaultPoint::HintWritten) {
                assert_ne!(live, before, "{ctx}: the swap was done");
            }
            if matches!(
                point,
                FaultPoint::Swapped | FaultPoint::HintWritten | FaultPoint::RetentionMoved
            ) {
                assert!(s2.current_version("u/a").unwrap().is_some(), "{ctx}");
            }
            // and it keeps working
            let next = commit(&s2, "u/a-latest", "after").unwrap();
            assert_eq!(read_tag(&s2.resolve("u/a-latest").unwrap().dir), "after");
            assert_consistent(&s2, "u/a", "after", &ctx);
            let oldest = s2.versions("u/a").unwrap()[0].clone();
            assert_ne!(oldest.version, next.version, "{ctx}");
            s2.rollback("u/a", oldest.version).unwrap();
            assert_eq!(
                assert_consistent(&s2, "u/a", "", &ctx),
                read_tag(&oldest.dir)
            );
        }
    }
}

#[test]
fn crash_anywhere_in_a_rollback_leaves_a_consistent_root() {
    let points = [
        FaultPoint::SnapshotTaken,
        FaultPoint::Staged,
        FaultPoint::MovedAside,
        FaultPoint::Swapped,
        FaultPoint::HintWritten,
    ];
    for point in points {
        let (_t, s) = store_for_crashes(false);
        s.set_retention(20);
        commit(&s, "u/a", "a").unwrap();
        commit(&s, "u/a", "b").unwrap();
        // a hand save makes the live folder no version, so the rollback snapshots it
        s.save_atomic("u/a", |d| write_adapter(d, "manual"))
            .unwrap();
        crash_at(&s, point);
        let err = s.rollback("u/a-latest", 1).unwrap_err();
        assert!(matches!(err, StoreError::InjectedFault(p) if p == point));
        let s2 = LoraStore::open(s.root()).unwrap();
        let live = assert_consistent(&s2, "u/a", "manual", &format!("{point:?}"));
        match point {
            FaultPoint::Swapped | FaultPoint::HintWritten => {
                assert_eq!(live, "a");
                assert_eq!(s2.current_version("u/a").unwrap(), Some(1));
            }
            _ => assert_eq!(live, "manual"),
        }
        // no version was lost: "manual" is one if the snapshot was taken
        let tags: Vec<String> = s2
            .versions("u/a")
            .unwrap()
            .iter()
            .map(|v| read_tag(&v.dir))
            .collect();
        assert_eq!(&tags[..3], ["old", "a", "b"], "{point:?}");
        s2.rollback("u/a", 2).unwrap();
        assert_eq!(read_tag(&s2.resolve("u/a").unwrap().dir), "b");
    }
}

#[test]
fn crash_anywhere_in_a_delete_finishes_it_at_open() {
    for point in [
        FaultPoint::DeleteMovedLive,
        FaultPoint::DeleteAliasesRemoved,
    ] {
        let (_t, s) = store_for_crashes(false);
        commit(&s, "u/a", "a").unwrap();
        commit(&s, "u/a", "b").unwrap();
        s.create_versioned("u/b", serde_json::Value::Null, false, |d| {
            write_adapter(d, "b")
        })
        .unwrap();
        s.set_alias("u/b-latest", "u/b").unwrap();
        crash_at(&s, point);
        let err = s.delete("u/a").unwrap_err();
        assert!(matches!(err, StoreError::InjectedFault(p) if p == point));
        // the adapter is already gone for readers
        assert!(!s.exists("u/a").unwrap());
        assert!(!s.exists("u/a-latest").unwrap());
        let s2 = LoraStore::open(s.root()).unwrap();
        assert!(!s2.exists("u/a").unwrap());
        assert_eq!(s2.list("").unwrap(), vec!["u/b", "u/b-latest"], "{point:?}");
        assert!(!s2.aliases().unwrap().contains_key("u/a-latest"));
        assert!(!s2.root().join(".versions/u/a").exists(), "{point:?}");
        assert_eq!(entry_names(&s2.state_dir("u/a").unwrap()), vec!["@lock"]);
        assert!(tmp_is_empty(&s2));
        assert_consistent(&s2, "u/b", "b", &format!("{point:?}"));
    }
}

#[test]
fn another_process_opening_mid_commit_leaves_it_alone() {
    for point in COMMIT_POINTS {
        let (_t, s) = store_for_crashes(false);
        let root = s.root().to_path_buf();
        let opened = Arc::new(Mutex::new(None));
        let seen = opened.clone();
        s.set_fault_hook(Some(Arc::new(move |p, _| {
            if p == point {
                *seen.lock().unwrap() = Some(LoraStore::open(&root).is_ok());
            }
            false
        })));
        for i in 0..3 {
            commit(&s, "u/a", &format!("n{i}")).unwrap();
        }
        assert_eq!(*opened.lock().unwrap(), Some(true), "{point:?}");
        assert_eq!(
            assert_consistent(&s, "u/a", "n2", &format!("{point:?}")),
            "n2"
        );
        assert_eq!(s.versions("u/a").unwrap().len(), 2);
    }
}

#[test]
fn a_nested_ids_history_folder_is_no_version() {
    let (_t, s) = store();
    s.create_versioned("u/a", serde_json::Value::Null, false, |d| {
        write_adapter(d, "a0")
    })
    .unwrap();
    // what the history of an id `u/a/v3` (made by hand beside `u/a`) looks like
    let nested = s.root().join(".versions/u/a/v3/v0");
    fs::create_dir_all(&nested).unwrap();
    write_adapter(&nested, "nested").unwrap();
    assert_eq!(s.versions("u/a").unwrap().len(), 1);
    assert!(matches!(
        s.resolve_ref("u/a@v3"),
        Err(StoreError::VersionNotFound { .. })
    ));
    // numbers skip the taken name; delete leaves the other id's history alone
    assert_eq!(commit(&s, "u/a", "a1").unwrap().version, 4);
    assert!(s.delete("u/a").unwrap());
    assert!(nested.join(ADAPTER_CONFIG).is_file());
    assert_eq!(entry_names(&s.root().join(".versions/u/a")), vec!["v3"]);
}

#[test]
fn served_names_resolve_to_their_adapters() {
    let (_t, s) = store();
    s.create_versioned("u/a-init", serde_json::json!({}), false, |d| {
        write_adapter(d, "a0")
    })
    .unwrap();
    s.set_alias("u/a-latest", "u/a-init").unwrap();
    s.commit_version("u/a-latest", serde_json::json!({}), |d| {
        write_adapter(d, "a1")
    })
    .unwrap();
    // An id, an alias, the served form of either, each with or without a version.
    for (name, dir_tag, version) in [
        ("u/a-init", "a1", None),
        ("u/a-latest", "a1", None),
        ("u-a-latest", "a1", None),
        ("u-a-init@v0", "a0", Some(0)),
        ("u/a-latest@v1", "a1", Some(1)),
    ] {
        let hits = s.resolve_served(name).unwrap();
        assert_eq!(hits.len(), 1, "{name}");
        assert_eq!(hits[0].resolved.id, "u/a-init", "{name}");
        assert_eq!(hits[0].version, version, "{name}");
        assert_eq!(read_tag(&hits[0].resolved.dir), dir_tag, "{name}");
    }
    assert!(s.resolve_served("u-a-init@v9").unwrap().is_empty());
    assert!(s.resolve_served("nobody").unwrap().is_empty());
    // An exact id wins over served forms.
    for id in ["x/y", "x-y"] {
        s.save_atomic(id, |d| write_adapter(d, id)).unwrap();
    }
    let exact = s.resolve_served("x-y").unwrap();
    assert_eq!(exact.len(), 1);
    assert_eq!(exact[0].reference, "x-y");
    // Two adapters with one served name and no exact id: both are reported.
    for id in ["p-/q", "p/-q"] {
        s.save_atomic(id, |d| write_adapter(d, "p")).unwrap();
    }
    let mut refs: Vec<String> = s
        .resolve_served("p--q")
        .unwrap()
        .into_iter()
        .map(|m| m.reference)
        .collect();
    refs.sort();
    assert_eq!(refs, vec!["p-/q", "p/-q"]);
}

#[test]
fn export_never_follows_links_out_of_the_root() {
    let (t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "a")).unwrap();
    let dir = s.root().join("u/a");
    let outside = t.path().join("outside");
    fs::create_dir_all(outside.join("deep")).unwrap();
    fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("file-link")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("loop")).unwrap();
    let (_, bytes) = s.export_zip("u/a").unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec![ADAPTER_CONFIG, ADAPTER_WEIGHTS]);
    // An adapter folder that is itself a link out of the root is refused.
    fs::create_dir_all(s.root().join("v")).unwrap();
    let out_adapter = t.path().join("out-adapter");
    fs::create_dir_all(&out_adapter).unwrap();
    write_adapter(&out_adapter, "x").unwrap();
    std::os::unix::fs::symlink(&out_adapter, s.root().join("v/linked")).unwrap();
    assert!(matches!(
        s.export_zip("v/linked"),
        Err(StoreError::InvalidId { .. })
    ));
}

#[test]
fn ids_deeper_than_listing_reaches_are_refused() {
    let (_t, s) = store();
    let deep16 = (0..16)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let deep17 = format!("{deep16}/x");
    assert!(validate_id(&deep16).is_ok());
    assert!(matches!(
        validate_id(&deep17),
        Err(StoreError::InvalidId { .. })
    ));
    assert!(s.save_atomic(&deep17, |d| write_adapter(d, "x")).is_err());
    assert!(s
        .create_versioned(&deep17, serde_json::json!({}), false, |d| write_adapter(
            d, "x"
        ))
        .is_err());
    // What can be created is listed.
    s.save_atomic(&deep16, |d| write_adapter(d, "x")).unwrap();
    assert_eq!(s.list("").unwrap(), vec![deep16]);
}

#[test]
fn list_and_writes_never_follow_links_out_of_the_root() {
    let (t, s) = store();
    s.save_atomic("u/a", |d| write_adapter(d, "a")).unwrap();
    // An adapter outside the root, linked in; a link loop; a broken link.
    let outside = t.path().join("outside");
    fs::create_dir_all(outside.join("evil")).unwrap();
    write_adapter(&outside.join("evil"), "evil").unwrap();
    std::os::unix::fs::symlink(&outside, s.root().join("out")).unwrap();
    std::os::unix::fs::symlink(".", s.root().join("u/loop")).unwrap();
    std::os::unix::fs::symlink(s.root().join("u"), s.root().join("u/up")).unwrap();
    std::os::unix::fs::symlink(t.path().join("nowhere"), s.root().join("broken")).unwrap();
    // A link to a folder inside the root is followed.
    std::os::unix::fs::symlink(s.root().join("u/a"), s.root().join("alias-dir")).unwrap();
    assert_eq!(s.list("").unwrap(), vec!["alias-dir", "u/a"]);
    // Creating through a link out of the root (or a broken one) is refused; nothing is
    // written outside.
    let before = fs::read_dir(&outside).unwrap().count();
    for id in ["out/new", "out/evil/inner", "broken/x"] {
        let r = s.create_versioned(id, serde_json::json!({}), false, |d| write_adapter(d, "n"));
        assert!(
            matches!(r, Err(StoreError::InvalidId { .. })),
            "{id}: {r:?}"
        );
        let r = s.save_atomic(id, |d| write_adapter(d, "n"));
        assert!(
            matches!(r, Err(StoreError::InvalidId { .. })),
            "{id}: {r:?}"
        );
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), before);
    assert!(!outside.join("new").exists());
    // A link loop does not hang creation either.
    s.create_versioned("u/b", serde_json::json!({}), false, |d| {
        write_adapter(d, "b")
    })
    .unwrap();
}

#[test]
fn rollback_never_writes_through_a_link_out_of_the_root() {
    let (t, s) = store();
    s.create_versioned("w/x", serde_json::json!({}), false, |d| {
        write_version(d, "v0")
    })
    .unwrap();
    commit(&s, "w/x", "v1").unwrap();
    // The operator moves the adapter's parent out of the root and links it back in.
    let outside = t.path().join("outside");
    fs::rename(s.root().join("w"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.root().join("w")).unwrap();
    let before = entry_names(&outside.join("x"));
    let r = s.rollback("w/x", 0);
    assert!(matches!(r, Err(StoreError::InvalidId { .. })), "{r:?}");
    assert_eq!(entry_names(&outside.join("x")), before);
    assert_eq!(entry_names(&outside), vec!["x"]);
}

#[test]
fn recovery_never_follows_links_out_of_the_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let outside = t.path().join("outside");
    fs::create_dir_all(outside.join("txn-0000")).unwrap();
    fs::write(outside.join("txn-0000/delete"), "u/a").unwrap();
    fs::create_dir_all(outside.join("txn-0000/live")).unwrap();
    fs::write(outside.join("keep.txt"), "keep").unwrap();
    // `.tmp` itself a link out of the root.
    std::os::unix::fs::symlink(&outside, root.join(".tmp")).unwrap();
    LoraStore::open(&root).unwrap();
    assert!(outside.join("txn-0000/live").is_dir());
    assert!(outside.join("keep.txt").is_file());
    // Links inside a real `.tmp`: only the links go.
    fs::remove_file(root.join(".tmp")).unwrap();
    fs::create_dir_all(root.join(".tmp")).unwrap();
    std::os::unix::fs::symlink(outside.join("txn-0000"), root.join(".tmp/txn-1111")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join(".tmp/del-2222")).unwrap();
    std::os::unix::fs::symlink(root.join(".tmp"), root.join(".tmp/loop")).unwrap();
    LoraStore::open(&root).unwrap();
    assert!(outside.join("txn-0000/live").is_dir());
    assert!(outside.join("keep.txt").is_file());
    assert_eq!(fs::read_dir(root.join(".tmp")).unwrap().count(), 0);
    // An interrupted swap whose target is reached through a link out of the root stays put.
    let txn = root.join(".tmp/txn-3333");
    fs::create_dir_all(txn.join("old")).unwrap();
    write_adapter(&txn.join("old"), "old").unwrap();
    fs::write(txn.join("target"), "out/a").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    LoraStore::open(&root).unwrap();
    assert!(!outside.join("a").exists());
}

#[test]
fn stamped_saves_are_pruned_to_the_newest_keep() {
    let (_t, s) = store();
    s.save_atomic("u/m-init", |d| write_adapter(d, "i"))
        .unwrap();
    let mut made = Vec::new();
    for i in 0..5 {
        let v = s
            .save_versioned(
                "u/m-latest",
                Some(&format!("20260101-00000{i}")),
                true,
                |d| write_adapter(d, "v"),
            )
            .unwrap();
        made.push(v.id);
    }
    // Stamped names only: not the init adapter or anything else.
    s.save_atomic("u/m-other", |d| write_adapter(d, "o"))
        .unwrap();
    assert_eq!(s.stamped_saves("u/m").unwrap(), made);
    // An alias pins an old one.
    s.set_alias("pinned", &made[0]).unwrap();
    // One being trained on (its update lock held) stays until a later call.
    let busy = s.try_lock_adapter(&made[1]).unwrap().unwrap();
    assert_eq!(
        s.prune_stamped_saves("u/m-latest", 2).unwrap(),
        vec![made[2].clone()]
    );
    drop(busy);
    let deleted = s.prune_stamped_saves("u/m-latest", 2).unwrap();
    assert_eq!(deleted, vec![made[1].clone()]);
    assert_eq!(
        s.stamped_saves("u/m").unwrap(),
        vec![made[0].clone(), made[3].clone(), made[4].clone()]
    );
    assert!(s.exists("u/m-init").unwrap() && s.exists("u/m-other").unwrap());
    assert_eq!(s.resolve("u/m-latest").unwrap().id, made[4]);
}

#[test]
fn stamped_names_are_not_reused_after_pruning() {
    let (_t, s) = store();
    s.save_atomic("u/r-init", |d| write_adapter(d, "i"))
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let v = s
            .save_versioned("u/r-latest", None, true, |d| write_adapter(d, "v"))
            .unwrap();
        assert!(seen.insert(v.id.clone()), "{} handed out twice", v.id);
        s.prune_stamped_saves("u/r", 2).unwrap();
        // The newest save sorts last.
        assert_eq!(s.stamped_saves("u/r").unwrap().last(), Some(&v.id));
    }
}
