//! One cached volume as a run of bytes, and back.
//!
//! Every field of [`Volume`] is written in a fixed order: strings unique to the volume
//! (name, uid, resourceVersion, the claim reference's, the NFS path, label values) in place,
//! in the shortest of a few forms (a UUID in 16 bytes, `pvc-` and a UUID, a decimal number
//! as a varint, else the text); strings that repeat across volumes as symbol numbers
//! ([`Symbols`]); counts and integers as varints; absent and empty kept apart. The name
//! comes first and the NFS path second, so lookups read them without decoding the rest
//! ([`Head`]).
//!
//! Hand-written rather than a serde binary format: those write every string in full, and
//! the symbols are what makes 100 000 records small.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NFSVolumeSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

use super::symbols::Symbols;
use crate::objects::{Volume, VolumeSpec, VolumeStatus};

/// Forms of a string written in place.
const ABSENT: u8 = 0;
const TEXT: u8 = 1;
const UUID: u8 = 2;
/// `pvc-` followed by a UUID: the names of the PVs this provisioner creates.
const PVC_UUID: u8 = 3;
const DECIMAL: u8 = 4;
/// The UUID the volume's name ends with (a claim's uid, in the PVs this provisioner creates).
const NAME_UUID: u8 = 5;
/// 16 lowercase hex digits (the directory-tree label's value), as 8 bytes.
const HEX64: u8 = 6;

const PVC: &str = "pvc-";

/// A lowercase UUID in its usual 36-character form, as 16 bytes.
fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0;
    for (i, c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if *c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
        nibbles += 1;
    }
    Some(out)
}

/// A number written without sign, leading zeros or anything else, so that it reads back as
/// the same text.
fn decimal(s: &str) -> Option<u64> {
    let canonical = !s.is_empty()
        && s.len() <= 19
        && s.bytes().all(|c| c.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// A string of a record, borrowed from it or rebuilt on the stack (a UUID or a number).
pub(super) struct Text<'a> {
    borrowed: Option<&'a str>,
    buf: [u8; 40],
    len: usize,
}

impl<'a> Text<'a> {
    fn borrowed(s: &'a str) -> Text<'a> {
        Text {
            borrowed: Some(s),
            buf: [0; 40],
            len: 0,
        }
    }

    fn built(prefix: &str, write: impl FnOnce(&mut [u8]) -> usize) -> Text<'a> {
        let mut buf = [0u8; 40];
        buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
        let len = prefix.len() + write(&mut buf[prefix.len()..]);
        Text {
            borrowed: None,
            buf,
            len,
        }
    }

    pub fn as_str(&self) -> &str {
        match self.borrowed {
            Some(s) => s,
            // Only ASCII is ever written into `buf`.
            None => std::str::from_utf8(&self.buf[..self.len]).unwrap_or(""),
        }
    }
}

fn write_uuid(bytes: &[u8; 16], out: &mut [u8]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    at
}

fn write_decimal(mut n: u64, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[i] = digits[len - 1 - i];
    }
    len
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn hex64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// The UUID at the end of a name (`pvc-<uuid>`), if it is one.
fn name_uuid(name: Option<&str>) -> Option<[u8; 16]> {
    let name = name?;
    name.len()
        .checked_sub(36)
        .and_then(|at| name.get(at..))
        .and_then(uuid_bytes)
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    symbols: &'a mut Symbols,
    name_uuid: Option<[u8; 16]>,
}

impl Writer<'_> {
    fn byte(&mut self, b: u8) {
        self.out.push(b);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    /// An absent value as 0, a present one as its count plus one.
    fn count(&mut self, n: Option<usize>) {
        self.varint(n.map_or(0, |n| n as u64 + 1));
    }

    fn flag(&mut self, b: Option<bool>) {
        self.byte(match b {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
    }

    fn int(&mut self, i: Option<i64>) {
        match i {
            None => self.byte(0),
            Some(i) => {
                self.byte(1);
                self.varint(zigzag(i));
            }
        }
    }

    fn time(&mut self, t: Option<&Time>) {
        match t {
            None => self.byte(0),
            Some(t) => {
                self.byte(1);
                self.varint(zigzag(t.0.as_second()));
                self.varint(zigzag(i64::from(t.0.subsec_nanosecond())));
            }
        }
    }

    /// A string unique to this volume.
    fn text(&mut self, s: Option<&str>) {
        let Some(s) = s else {
            return self.byte(ABSENT);
        };
        if let Some(uuid) = uuid_bytes(s) {
            if Some(uuid) == self.name_uuid {
                return self.byte(NAME_UUID);
            }
            self.byte(UUID);
            self.out.extend_from_slice(&uuid);
        } else if let Some(uuid) = s.strip_prefix(PVC).and_then(uuid_bytes) {
            self.byte(PVC_UUID);
            self.out.extend_from_slice(&uuid);
        } else if let Some(n) = decimal(s) {
            self.byte(DECIMAL);
            self.varint(n);
        } else if let Some(n) = hex64(s) {
            self.byte(HEX64);
            self.out.extend_from_slice(&n.to_le_bytes());
        } else {
            self.byte(TEXT);
            self.varint(s.len() as u64);
            self.out.extend_from_slice(s.as_bytes());
        }
    }

    /// A string many volumes share.
    fn sym(&mut self, s: Option<&str>) {
        let id = s.map(|s| self.symbols.intern(s));
        self.varint(id.map_or(0, |id| u64::from(id) + 1));
    }

    /// An NFS path: its parent directory is shared with other volumes, and its last
    /// component often ends with the volume's name (the default path pattern).
    fn path(&mut self, path: &str, name: Option<&str>) {
        let (parent, base) = match path.rfind('/') {
            Some(i) => (Some(&path[..i]), &path[i + 1..]),
            None => (None, path),
        };
        self.sym(parent);
        match name
            .filter(|n| !n.is_empty())
            .and_then(|n| base.strip_suffix(n))
        {
            Some(rest) => {
                self.byte(1);
                self.text(Some(rest));
            }
            None => {
                self.byte(0);
                self.text(Some(base));
            }
        }
    }

    fn sym_pairs<V>(&mut self, map: Option<&BTreeMap<String, V>>, value: impl Fn(&V) -> &str) {
        self.count(map.map(BTreeMap::len));
        for (k, v) in map.into_iter().flatten() {
            self.sym(Some(k));
            self.sym(Some(value(v)));
        }
    }
}

/// Appends `pv`'s record to `out`.
pub(super) fn encode(pv: &Volume, symbols: &mut Symbols, out: &mut Vec<u8>) {
    let meta = &pv.metadata;
    let mut w = Writer {
        out,
        symbols,
        name_uuid: None,
    };
    let spec = pv.spec.as_deref();
    let nfs = spec.and_then(|s| s.nfs.as_ref());
    let name = meta.name.as_deref();
    w.text(name);
    w.name_uuid = name_uuid(name);
    w.flag(nfs.map(|_| true));
    if let Some(nfs) = nfs {
        w.path(&nfs.path, name);
    }
    w.sym(nfs.map(|n| n.server.as_str()));
    w.flag(nfs.and_then(|n| n.read_only));
    w.text(meta.uid.as_deref());
    w.text(meta.resource_version.as_deref());
    w.time(meta.creation_timestamp.as_ref());
    w.time(meta.deletion_timestamp.as_ref());
    w.int(meta.deletion_grace_period_seconds);
    w.sym_pairs(meta.annotations.as_ref(), String::as_str);
    let labels = meta.labels.as_ref();
    w.count(labels.map(BTreeMap::len));
    for (k, v) in labels.into_iter().flatten() {
        w.sym(Some(k));
        w.text(Some(v));
    }
    let finalizers = meta.finalizers.as_ref();
    w.count(finalizers.map(Vec::len));
    for f in finalizers.into_iter().flatten() {
        w.sym(Some(f));
    }
    w.flag(spec.map(|_| true));
    if let Some(spec) = spec {
        let claim = spec.claim_ref.as_ref();
        w.flag(claim.map(|_| true));
        if let Some(c) = claim {
            w.sym(c.api_version.as_deref());
            w.sym(c.kind.as_deref());
            w.sym(c.namespace.as_deref());
            w.text(c.name.as_deref());
            w.text(c.uid.as_deref());
            w.text(c.resource_version.as_deref());
            w.text(c.field_path.as_deref());
        }
        w.sym(spec.persistent_volume_reclaim_policy.as_deref());
        w.sym(spec.storage_class_name.as_deref());
        w.sym_pairs(spec.capacity.as_ref(), |q: &Quantity| q.0.as_str());
    }
    w.flag(pv.status.as_ref().map(|_| true));
    if let Some(status) = &pv.status {
        w.sym(status.phase.as_deref());
    }
    // What few PVs have.
    w.text(meta.namespace.as_deref());
    w.text(meta.generate_name.as_deref());
    w.int(meta.generation);
    let owners = meta
        .owner_references
        .as_ref()
        .and_then(|o| serde_json::to_string(o).ok());
    w.text(owners.as_deref());
}

/// Reads a record back. Total: bytes past the end read as zero (records are only ever
/// written by [`encode`], so this does not happen).
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    symbols: Option<&'a Symbols>,
    /// Symbols seen, for a sweep.
    marks: Option<&'a mut Vec<bool>>,
    name_uuid: Option<[u8; 16]>,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], symbols: Option<&'a Symbols>) -> Reader<'a> {
        Reader {
            bytes,
            at: 0,
            symbols,
            marks: None,
            name_uuid: None,
        }
    }

    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.bytes.len());
        let end = self.at.saturating_add(n).min(self.bytes.len());
        self.at = self.at.saturating_add(n);
        &self.bytes[start..end]
    }

    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }

    fn count(&mut self) -> Option<usize> {
        match self.varint() {
            0 => None,
            n => Some((n - 1) as usize),
        }
    }

    fn flag(&mut self) -> Option<bool> {
        match self.byte() {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        }
    }

    fn int(&mut self) -> Option<i64> {
        (self.byte() != 0).then(|| unzigzag(self.varint()))
    }

    fn time(&mut self) -> Option<Time> {
        if self.byte() == 0 {
            return None;
        }
        let seconds = unzigzag(self.varint());
        let nanos = i32::try_from(unzigzag(self.varint())).unwrap_or(0);
        Some(Time(Timestamp::new(seconds, nanos).unwrap_or_default()))
    }

    fn text_ref(&mut self) -> Option<Text<'a>> {
        match self.byte() {
            ABSENT => None,
            UUID => {
                let uuid: [u8; 16] = self.take(16).try_into().unwrap_or_default();
                Some(Text::built("", |out| write_uuid(&uuid, out)))
            }
            PVC_UUID => {
                let uuid: [u8; 16] = self.take(16).try_into().unwrap_or_default();
                Some(Text::built(PVC, |out| write_uuid(&uuid, out)))
            }
            DECIMAL => {
                let n = self.varint();
                Some(Text::built("", |out| write_decimal(n, out)))
            }
            NAME_UUID => {
                let uuid = self.name_uuid.unwrap_or_default();
                Some(Text::built("", |out| write_uuid(&uuid, out)))
            }
            HEX64 => {
                let n = u64::from_le_bytes(self.take(8).try_into().unwrap_or_default());
                Some(Text::built("", |out| {
                    let hex = format!("{n:016x}");
                    out[..16].copy_from_slice(hex.as_bytes());
                    16
                }))
            }
            _ => {
                let len = self.varint() as usize;
                let bytes = self.take(len);
                // Written from a `&str`.
                Some(Text::borrowed(std::str::from_utf8(bytes).unwrap_or("")))
            }
        }
    }

    fn text(&mut self) -> Option<String> {
        self.text_ref().map(|t| t.as_str().to_string())
    }

    fn sym_id(&mut self) -> Option<u32> {
        let id = match self.varint() {
            0 => return None,
            n => u32::try_from(n - 1).unwrap_or(u32::MAX),
        };
        if let Some(marks) = self.marks.as_deref_mut()
            && let Some(mark) = marks.get_mut(id as usize)
        {
            *mark = true;
        }
        Some(id)
    }

    fn sym_ref(&mut self) -> Option<&'a str> {
        let id = self.sym_id()?;
        Some(self.symbols.map(|s| s.text(id)).unwrap_or(""))
    }

    fn sym(&mut self) -> Option<String> {
        self.sym_ref().map(str::to_string)
    }

    /// The name, then the NFS path (see [`Writer::path`]).
    fn name_and_path(&mut self) -> (Option<Text<'a>>, Option<String>) {
        let name = self.text_ref();
        self.name_uuid = name_uuid(name.as_ref().map(Text::as_str));
        let path = self.flag().map(|_| {
            let parent = self.sym_ref();
            let ends_with_name = self.byte() == 1;
            let base = self.text_ref();
            let mut path = String::new();
            if let Some(parent) = parent {
                path.push_str(parent);
                path.push('/');
            }
            path.push_str(base.as_ref().map_or("", Text::as_str));
            if ends_with_name {
                path.push_str(name.as_ref().map_or("", Text::as_str));
            }
            path
        });
        (name, path)
    }

    fn sym_pairs<V>(&mut self, value: impl Fn(String) -> V) -> Option<BTreeMap<String, V>> {
        let n = self.count()?;
        Some(
            (0..n)
                .map(|_| {
                    let k = self.sym().unwrap_or_default();
                    (k, value(self.sym().unwrap_or_default()))
                })
                .collect(),
        )
    }
}

/// The name of a record, read without the rest.
pub(super) fn name(record: &[u8]) -> Text<'_> {
    Reader::new(record, None)
        .text_ref()
        .unwrap_or_else(|| Text::borrowed(""))
}

/// The NFS path of a record, read without the rest.
pub(super) fn nfs_path(record: &[u8], symbols: &Symbols) -> Option<String> {
    Reader::new(record, Some(symbols)).name_and_path().1
}

/// The volume a record was made from.
pub(super) fn decode(record: &[u8], symbols: &Symbols) -> Volume {
    read(Reader::new(record, Some(symbols)))
}

/// Marks in `marks` (indexed by symbol number) every symbol the record refers to.
pub(super) fn mark_symbols(record: &[u8], symbols: &Symbols, marks: &mut Vec<bool>) {
    let mut r = Reader::new(record, Some(symbols));
    r.marks = Some(marks);
    read(r);
}

fn read(mut r: Reader<'_>) -> Volume {
    let (name, nfs_path) = r.name_and_path();
    let name = name.map(|n| n.as_str().to_string());
    let nfs_server = r.sym();
    let read_only = r.flag();
    let uid = r.text();
    let resource_version = r.text();
    let creation_timestamp = r.time();
    let deletion_timestamp = r.time();
    let deletion_grace_period_seconds = r.int();
    let annotations = r.sym_pairs(|v| v);
    let labels = r.count().map(|n| {
        (0..n)
            .map(|_| {
                let k = r.sym().unwrap_or_default();
                (k, r.text().unwrap_or_default())
            })
            .collect()
    });
    let finalizers = r
        .count()
        .map(|n| (0..n).map(|_| r.sym().unwrap_or_default()).collect());
    let spec = r.flag().map(|_| {
        let claim_ref = r.flag().map(|_| ObjectReference {
            api_version: r.sym(),
            kind: r.sym(),
            namespace: r.sym(),
            name: r.text(),
            uid: r.text(),
            resource_version: r.text(),
            field_path: r.text(),
        });
        Box::new(VolumeSpec {
            claim_ref,
            nfs: nfs_server.map(|server| NFSVolumeSource {
                path: nfs_path.unwrap_or_default(),
                read_only,
                server,
            }),
            persistent_volume_reclaim_policy: r.sym(),
            storage_class_name: r.sym(),
            capacity: r.sym_pairs(Quantity),
        })
    });
    let status = r.flag().map(|_| VolumeStatus { phase: r.sym() });
    let namespace = r.text();
    let generate_name = r.text();
    let generation = r.int();
    let owner_references: Option<Vec<OwnerReference>> =
        r.text().and_then(|json| serde_json::from_str(&json).ok());
    Volume {
        metadata: ObjectMeta {
            annotations,
            creation_timestamp,
            deletion_grace_period_seconds,
            deletion_timestamp,
            finalizers,
            generate_name,
            generation,
            labels,
            name,
            namespace,
            owner_references,
            resource_version,
            uid,
            ..Default::default()
        },
        spec,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(pv: &Volume) -> (Volume, usize) {
        let mut symbols = Symbols::default();
        let mut bytes = Vec::new();
        encode(pv, &mut symbols, &mut bytes);
        (decode(&bytes, &symbols), bytes.len())
    }

    #[test]
    fn strings_come_back_in_every_form() {
        for s in [
            "",
            "0",
            "007",
            "+1",
            "18446744073709551615",
            "1234567890123456789",
            "12345678901234567890",
            "pvc-3f8b5a52-6a0e-4c1e-9d8a-0b6c2f1e4d7a",
            "3f8b5a52-6a0e-4c1e-9d8a-0b6c2f1e4d7a",
            "3F8B5A52-6A0E-4C1E-9D8A-0B6C2F1E4D7A",
            "pvc-3f8b5a52-6a0e-4c1e-9d8a-0b6c2f1e4d7",
            "3f8b5a52x6a0e-4c1e-9d8a-0b6c2f1e4d7a",
            "9a3c1e5b7d2f4a6c",
            "9A3C1E5B7D2F4A6C",
            "0000000000000000",
            "ümlaut/ and spaces",
        ] {
            let mut symbols = Symbols::default();
            let mut bytes = Vec::new();
            Writer {
                out: &mut bytes,
                symbols: &mut symbols,
                name_uuid: None,
            }
            .text(Some(s));
            let back = Reader::new(&bytes, None).text();
            assert_eq!(back.as_deref(), Some(s));
        }
    }

    #[test]
    fn a_provisioned_volume_is_small() {
        let pv: Volume = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "pvc-3f8b5a52-6a0e-4c1e-9d8a-0b6c2f1e4d7a",
                "uid": "8c2d0e47-1b7f-4f58-a0a3-5b2e9c6d1f30", "resourceVersion": "1234567",
                "creationTimestamp": "2025-03-01T10:00:01Z",
                "labels": {"nfs-provisioner.io/directory-tree": "9a3c1e5b7d2f4a6c"},
                "annotations": {"pv.kubernetes.io/provisioned-by": "example.com/nfs",
                                "nfs-provisioner.io/on-delete": "delete"},
                "finalizers": ["kubernetes.io/pv-protection", "nfs-provisioner.io/volume-directory"]
            },
            "spec": {
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "team-a",
                             "name": "data", "uid": "3f8b5a52-6a0e-4c1e-9d8a-0b6c2f1e4d7a",
                             "resourceVersion": "1234000"},
                "nfs": {"server": "filer", "path": "/exports/team-a-data-pvc-3f8b5a52-6a0e-4c1e-9d8a-0b6c2f1e4d7a"},
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "nfs",
                "capacity": {"storage": "1Gi"}
            },
            "status": {"phase": "Released"}
        }))
        .unwrap();
        let (back, len) = round_trip(&pv);
        assert_eq!(back, pv);
        // Its unique strings alone are 300 bytes as text; 113 bytes when written.
        assert!(len <= 120, "{len} bytes");
    }

    fn text() -> BoxedStrategy<String> {
        prop_oneof![
            "[a-z0-9./-]{0,12}",
            "[0-9]{1,20}",
            "pvc-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[0-9a-fA-F]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            ".*",
        ]
        .boxed()
    }

    fn map() -> BoxedStrategy<Option<BTreeMap<String, String>>> {
        prop::option::of(prop::collection::btree_map(text(), text(), 0..3)).boxed()
    }

    fn time() -> impl Strategy<Value = Option<Time>> {
        prop::option::of(
            (-10_000_000_000i64..10_000_000_000, 0i32..1_000_000_000)
                .prop_map(|(s, n)| Time(Timestamp::new(s, n).unwrap())),
        )
    }

    prop_compose! {
        fn claim_ref()(
            api_version in prop::option::of(text()), kind in prop::option::of(text()),
            namespace in prop::option::of(text()), name in prop::option::of(text()),
            uid in prop::option::of(text()), resource_version in prop::option::of(text()),
            field_path in prop::option::of(text()),
        ) -> ObjectReference {
            ObjectReference { api_version, kind, namespace, name, uid, resource_version, field_path }
        }
    }

    prop_compose! {
        fn spec()(
            claim_ref in prop::option::of(claim_ref()),
            nfs in prop::option::of((text(), text(), prop::option::of(any::<bool>()))),
            persistent_volume_reclaim_policy in prop::option::of(text()),
            storage_class_name in prop::option::of(text()),
            capacity in map(),
        ) -> VolumeSpec {
            VolumeSpec {
                claim_ref,
                nfs: nfs.map(|(server, path, read_only)| NFSVolumeSource { server, path, read_only }),
                persistent_volume_reclaim_policy,
                storage_class_name,
                capacity: capacity.map(|c| c.into_iter().map(|(k, v)| (k, Quantity(v))).collect()),
            }
        }
    }

    prop_compose! {
        fn volume()(
            name in prop::option::of(text()), uid in prop::option::of(text()),
            resource_version in prop::option::of(text()),
            times in (time(), time()),
            ints in (prop::option::of(any::<i64>()), prop::option::of(any::<i64>())),
            annotations in map(), labels in map(),
            finalizers in prop::option::of(prop::collection::vec(text(), 0..3)),
            rare in (prop::option::of(text()), prop::option::of(text()), any::<bool>()),
            spec in prop::option::of(spec()),
            status in prop::option::of(prop::option::of(text())),
        ) -> Volume {
            Volume {
                metadata: ObjectMeta {
                    name, uid, resource_version, annotations, labels, finalizers,
                    creation_timestamp: times.0, deletion_timestamp: times.1,
                    deletion_grace_period_seconds: ints.0, generation: ints.1,
                    namespace: rare.0, generate_name: rare.1,
                    owner_references: rare.2.then(|| vec![OwnerReference {
                        api_version: "v1".into(), kind: "X".into(), name: "o".into(),
                        uid: "u".into(), ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: spec.map(Box::new),
                status: status.map(|phase| VolumeStatus { phase }),
            }
        }
    }

    proptest! {
        /// Whatever a volume holds (every field of [`Volume`], absent, empty or set), its
        /// record reads back as exactly that, and its head as its name and NFS path.
        #[test]
        fn every_volume_reads_back_as_it_was(pv in volume()) {
            let mut symbols = Symbols::default();
            let mut bytes = Vec::new();
            encode(&pv, &mut symbols, &mut bytes);
            prop_assert_eq!(&decode(&bytes, &symbols), &pv);
            let read_name = name(&bytes);
            prop_assert_eq!(read_name.as_str(), pv.metadata.name.as_deref().unwrap_or(""));
            let path = pv.spec.as_ref().and_then(|s| s.nfs.as_ref()).map(|n| n.path.clone());
            prop_assert_eq!(nfs_path(&bytes, &symbols), path);
        }
    }
}
