//! Unit tests of the copy's internal bounds (open levels, depth, hard-link map) and of its
//! slicing, on real temporary directories. The hostile and crash cases are in
//! `tests/storage_clone.rs`.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, fstat};

use super::*;

use crate::storage::tests::temp_root;

fn open_root(path: &Path) -> (OwnedFd, u64) {
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let dev = fstat(&fd).unwrap().st_dev;
    (fd, dev)
}

fn staging() -> CloneStaging {
    CloneStaging::for_claim("0b1c2d3e-0000-4000-8000-000000000001").unwrap()
}

/// Runs a copy to the end. `sliced`: every slice ends as soon as it made progress, so the
/// state is handed over between slices as often as possible.
fn copy(root: &Path, limits: CopyLimits, sliced: bool) -> Result<(CopyOutcome, u32), StorageError> {
    let (fd, dev) = open_root(root);
    let mut job = CopyJob::new(VolumeDirectory::parse("src").unwrap(), staging(), limits);
    let mut slices = 0;
    loop {
        slices += 1;
        let ctx = if sliced {
            OpContext::with_slice_end(Instant::now())
        } else {
            OpContext::detached()
        };
        if let Step::Done = job.slice(fd.as_fd(), dev, &ctx)? {
            return Ok((job.into_outcome(), slices));
        }
    }
}

fn copied(root: &Path) -> std::path::PathBuf {
    root.join(".nfs-provisioner-staging")
        .join(staging().complete_name())
}

/// Every path beneath `dir` with its kind, mode and content (files) or target (symlinks).
fn listing(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let what = if md.is_dir() {
                pending.push(path.clone());
                format!("dir {:o}", md.mode() & 0o7777)
            } else if md.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else {
                format!(
                    "file {:o} {:?}",
                    md.mode() & 0o7777,
                    fs::read(&path).unwrap()
                )
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

#[test]
fn deep_tree_beyond_the_open_levels_is_copied_whole() {
    let tmp = temp_root();
    let root = tmp.path();
    // Siblings after each deep descent: reading must continue where it stopped once the
    // closed levels are reopened.
    let mut dir = root.join("src");
    for level in 0..9 {
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::write(dir.join(format!("f{level}")), format!("file {level}")).unwrap();
        for sibling in ["b", "c", "d"] {
            fs::create_dir(dir.join(sibling)).unwrap();
            fs::write(dir.join(sibling).join("x"), sibling).unwrap();
        }
        fs::set_permissions(dir.join("c"), fs::Permissions::from_mode(0o751)).unwrap();
        dir = dir.join("a");
    }
    let limits = CopyLimits {
        open_levels: 2,
        ..CopyLimits::default()
    };
    for sliced in [false, true] {
        let (outcome, slices) = copy(root, limits, sliced).unwrap();
        assert_eq!(outcome.start, CopyStart::Fresh);
        assert_eq!(listing(&copied(root)), listing(&root.join("src")));
        // 9 levels of (a, b, c, d, 3 files x, f) + the top directory.
        assert_eq!(outcome.progress.entries, 9 * 8 + 1);
        if sliced {
            assert!(slices > 9 * 8, "{slices} slices");
        }
        fs::remove_dir_all(copied(root)).unwrap();
    }
}

#[test]
fn a_source_deeper_than_the_limit_fails_clearly() {
    let tmp = temp_root();
    let root = tmp.path();
    fs::create_dir_all(root.join("src/1/2/3/4")).unwrap();
    let limits = CopyLimits {
        max_depth: 3,
        ..CopyLimits::default()
    };
    let err = copy(root, limits, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("more than 3 directory levels deep"),
        "{err}"
    );
    assert!(!copied(root).exists());
    // Exactly at the limit is fine.
    fs::remove_dir_all(root.join(".nfs-provisioner-staging")).unwrap();
    fs::remove_dir(root.join("src/1/2/3/4")).unwrap();
    copy(root, limits, false).unwrap();
    assert!(copied(root).join("1/2/3").is_dir());
}

#[test]
fn hard_links_beyond_the_bound_are_copied_as_separate_files_with_notes() {
    let tmp = temp_root();
    let root = tmp.path();
    fs::create_dir_all(root.join("src/in")).unwrap();
    fs::create_dir(root.join("elsewhere")).unwrap();
    // Three files with a second name outside the source: their entries are never
    // consumed, so with room for one, the other two cannot be tracked.
    for i in 0..3 {
        let file = root.join(format!("src/out{i}"));
        fs::write(&file, format!("out {i}")).unwrap();
        fs::hard_link(&file, root.join(format!("elsewhere/out{i}"))).unwrap();
    }
    fs::write(root.join("src/in/p"), b"pair").unwrap();
    fs::hard_link(root.join("src/in/p"), root.join("src/in/q")).unwrap();

    // Plenty of room: the pair stays one file; the outside links are copied as files.
    let (outcome, _) = copy(root, CopyLimits::default(), false).unwrap();
    assert!(outcome.notes.is_empty(), "{:?}", outcome.notes);
    let ino = |p: &str| fs::metadata(copied(root).join(p)).unwrap().ino();
    assert_eq!(ino("in/p"), ino("in/q"));
    assert_eq!(fs::metadata(copied(root).join("in/p")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(copied(root).join("out0")).unwrap().nlink(), 1);
    fs::remove_dir_all(copied(root)).unwrap();

    // Room for one: whichever file comes first fills it; every later multiply-linked file
    // is copied separately, with a note naming it.
    let limits = CopyLimits {
        max_links: 1,
        ..CopyLimits::default()
    };
    let (outcome, _) = copy(root, limits, false).unwrap();
    assert_eq!(listing(&copied(root)), listing(&root.join("src")));
    let noted: Vec<&str> = outcome
        .notes
        .iter()
        .filter(|n| n.kind == CopyNoteKind::HardLinkCopied)
        .map(|n| n.path.as_str())
        .collect();
    if ino("in/p") == ino("in/q") {
        // `in` was copied first and the pair took the slot (freed once both were seen).
        assert_eq!(noted.len(), 2, "{noted:?}");
    } else {
        assert!(
            noted.contains(&"in/p") && noted.contains(&"in/q"),
            "{noted:?}"
        );
        assert_eq!(noted.len(), 4, "{noted:?}");
    }
    assert_eq!(outcome.progress.skipped, 0);
    assert_eq!(outcome.progress.notes, noted.len() as u64);
}

#[test]
fn a_large_file_is_copied_across_slices() {
    let tmp = temp_root();
    let root = tmp.path();
    fs::create_dir(root.join("src")).unwrap();
    let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 12345))
        .map(|i| (i % 251) as u8)
        .collect();
    fs::write(root.join("src/big"), &data).unwrap();
    let (outcome, slices) = copy(root, CopyLimits::default(), true).unwrap();
    assert!(slices >= 3, "{slices} slices");
    assert_eq!(outcome.progress.bytes, data.len() as u64);
    assert!(fs::read(copied(root).join("big")).unwrap() == data);
}
