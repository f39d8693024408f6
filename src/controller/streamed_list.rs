//! A whole list of a resource, in one request served from the API server's watch cache
//! (`resourceVersion=0`), decoded item by item as its body arrives.
//!
//! Paged lists are served from etcd: 200 pages of 100 000 volumes took 11–13 s where one
//! unpaged list from the watch cache took about 3. But that one body is 356 MB of JSON, and
//! kube's `Api::list` holds a whole body before decoding it. Here each piece of the body is
//! split into its items' bytes ([`ItemSplitter`]) as it arrives, and each item is decoded on
//! its own (`serde_json::from_slice`, which is several times faster than decoding from a
//! reader), so no more than a piece of the body and the items it completes are held.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::{AsyncBufRead, AsyncBufReadExt};
use kube::api::ListParams;
use kube::{Client, core::Request};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why a list failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Request(#[from] kube::Error),
    #[error("reading the list response: {0}")]
    Read(#[from] std::io::Error),
    #[error("list response: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("list response is not a list: {0}")]
    Malformed(&'static str),
    #[error("list response has no metadata.resourceVersion")]
    NoResourceVersion,
}

impl From<ListError> for kube::Error {
    fn from(e: ListError) -> kube::Error {
        match e {
            ListError::Request(e) => e,
            ListError::Read(e) => kube::Error::ReadEvents(e),
            ListError::Decode(e) => kube::Error::SerdeError(e),
            other => kube::Error::Service(Box::new(other)),
        }
    }
}

/// A list in progress: its items as they are decoded, then its resourceVersion.
pub struct StreamedList<K> {
    body: Pin<Box<dyn AsyncBufRead + Send>>,
    splitter: ItemSplitter,
    /// Items of the last piece of the body, not yet taken.
    decoded: VecDeque<K>,
    /// Set once the body ended or failed.
    outcome: Option<Result<String, ListError>>,
}

impl<K: DeserializeOwned> StreamedList<K> {
    fn new(body: impl AsyncBufRead + Send + 'static) -> Self {
        StreamedList {
            body: Box::pin(body),
            splitter: ItemSplitter::default(),
            decoded: VecDeque::new(),
            outcome: None,
        }
    }

    /// The next item; `None` once the list is complete or failed (see [`Self::finish`]).
    pub async fn next(&mut self) -> Option<K> {
        loop {
            if let Some(item) = self.decoded.pop_front() {
                return Some(item);
            }
            if self.outcome.is_some() {
                return None;
            }
            let piece = match self.body.fill_buf().await {
                Ok([]) => {
                    let head = std::mem::take(&mut self.splitter);
                    self.outcome = Some(head.finish());
                    continue;
                }
                Ok(piece) => piece,
                Err(e) => {
                    self.outcome = Some(Err(e.into()));
                    continue;
                }
            };
            let len = piece.len();
            let decoded = &mut self.decoded;
            let fed = self.splitter.feed(piece, |item| {
                decoded.push_back(serde_json::from_slice(item)?);
                Ok(())
            });
            if let Err(e) = fed {
                self.outcome = Some(Err(e));
            }
            self.body.consume_unpin(len);
        }
    }

    /// The list's resourceVersion once every item was taken, or why it failed (items taken
    /// before a failure were only part of the list).
    pub fn finish(self) -> Result<String, ListError> {
        self.outcome.unwrap_or(Err(ListError::Malformed(
            "the list was not read to its end",
        )))
    }
}

/// Starts listing every object at `url_path` (e.g. `/api/v1/persistentvolumes`) from the
/// watch cache; returns once the response headers are in.
pub async fn list<K>(client: &Client, url_path: &str) -> Result<StreamedList<K>, ListError>
where
    K: DeserializeOwned,
{
    // resourceVersion=0 without a limit: the watch cache answers (an API server of 1.19 to
    // 1.33 ignores any limit with resourceVersion=0 anyway), etcd is not read at all.
    let params = ListParams {
        resource_version: Some("0".into()),
        ..ListParams::default()
    };
    let request = Request::new(url_path)
        .list(&params)
        .map_err(kube::Error::BuildRequest)?;
    let body = client.request_stream(request).await?;
    Ok(StreamedList::new(body))
}

/// Splits a list's JSON (`{"kind": …, "metadata": {…}, "items": [{…}, …]}`), fed in pieces
/// cut anywhere, into the bytes of each item, and keeps the rest (the list without its
/// items, a few hundred bytes) to read the resourceVersion from at the end. It tracks only
/// nesting and strings; the items and the rest are then parsed by serde_json, which checks
/// them.
#[derive(Default)]
pub struct ItemSplitter {
    /// Nesting of objects and arrays: 1 inside the list, 2 inside its items array.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// In the list object, the next string is a key.
    expect_key: bool,
    reading_key: bool,
    /// The list object's last key.
    key: Vec<u8>,
    in_items: bool,
    in_item: bool,
    /// The current item's bytes from earlier pieces.
    item: Vec<u8>,
    /// The list without its items' contents.
    head: Vec<u8>,
}

impl ItemSplitter {
    /// Feeds the next piece of the body, handing `each` the bytes of every item it completes.
    pub fn feed(
        &mut self,
        piece: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), ListError>,
    ) -> Result<(), ListError> {
        let mut i = 0;
        // Where the current item starts in this piece (0 if it began in an earlier one).
        let mut start = 0;
        while i < piece.len() {
            if !self.in_items {
                self.head_byte(piece[i])?;
                i += 1;
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &piece[i..]) {
                    None => i = piece.len(),
                    Some(at) => {
                        if piece[i + at] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += at + 1;
                    }
                }
                continue;
            }
            match piece[i] {
                b'"' if self.depth == 2 => {
                    return Err(ListError::Malformed("an item is not an object"));
                }
                b'"' => self.in_string = true,
                open @ (b'{' | b'[') => {
                    if self.depth == 2 {
                        if open != b'{' {
                            return Err(ListError::Malformed("an item is not an object"));
                        }
                        self.in_item = true;
                        self.item.clear();
                        start = i;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 2 {
                        let bytes = if self.item.is_empty() {
                            &piece[start..=i]
                        } else {
                            self.item.extend_from_slice(&piece[start..=i]);
                            &self.item
                        };
                        each(bytes)?;
                        self.item.clear();
                        self.in_item = false;
                    } else if self.depth == 1 {
                        self.in_items = false;
                        self.head.extend_from_slice(b"[]");
                    }
                }
                b',' | b' ' | b'\n' | b'\r' | b'\t' => {}
                _ if self.depth == 2 => {
                    return Err(ListError::Malformed("an item is not an object"));
                }
                _ => {}
            }
            i += 1;
        }
        if self.in_item {
            self.item.extend_from_slice(&piece[start..]);
        }
        Ok(())
    }

    /// A byte outside the items array: kept, and followed for the list object's keys.
    fn head_byte(&mut self, b: u8) -> Result<(), ListError> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.reading_key = false;
            } else if self.reading_key {
                self.key.push(b);
            }
            self.head.push(b);
            return Ok(());
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.reading_key = true;
                    self.expect_key = false;
                    self.key.clear();
                }
            }
            b'[' if self.depth == 1 && !self.expect_key && self.key == b"items" => {
                self.depth = 2;
                self.in_items = true;
                return Ok(());
            }
            b'{' | b'[' => {
                self.depth += 1;
                self.expect_key = self.depth == 1;
            }
            b'}' | b']' => {
                self.depth = self
                    .depth
                    .checked_sub(1)
                    .ok_or(ListError::Malformed("unbalanced brackets"))?;
            }
            b',' if self.depth == 1 => self.expect_key = true,
            _ => {}
        }
        self.head.push(b);
        Ok(())
    }

    /// The list's resourceVersion, once the whole body was fed.
    pub fn finish(self) -> Result<String, ListError> {
        if self.in_items || self.in_string || self.depth != 0 {
            return Err(ListError::Malformed("the body ended inside the list"));
        }
        #[derive(Deserialize)]
        struct Head {
            metadata: Option<ListMeta>,
        }
        #[derive(Deserialize)]
        struct ListMeta {
            #[serde(rename = "resourceVersion")]
            resource_version: Option<String>,
        }
        let head: Head = serde_json::from_slice(&self.head)?;
        head.metadata
            .and_then(|m| m.resource_version)
            .filter(|rv| !rv.is_empty())
            .ok_or(ListError::NoResourceVersion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Volume;
    use proptest::prelude::*;
    use serde_json::json;

    fn volume_list(n: usize) -> Vec<u8> {
        let items: Vec<_> = (0..n)
            .map(|i| {
                json!({
                    "metadata": {"name": format!("pv-{i}"), "resourceVersion": format!("{}", 10 + i),
                                 "annotations": {"note": "a \"quoted\" ] } [ { \\", "items": "[{",
                                                 "odd": "\"}]", "slash": "\\"},
                                 "managedFields": [{"manager": "kcm", "fieldsV1": {"f:spec": {}}}]},
                    "spec": {"nfs": {"server": "filer", "path": format!("/export/{i}")}},
                    "status": {"phase": "Bound"}
                })
            })
            .collect();
        serde_json::to_vec_pretty(&json!({
            "kind": "PersistentVolumeList",
            "apiVersion": "v1",
            "a": "\"items\": [{\\",
            "c": "\"}",
            "b": "items",
            "metadata": {"resourceVersion": "4242"},
            "items": items,
        }))
        .unwrap()
    }

    /// Feeds `body` cut at `cuts`; the names of the items in order, and the resourceVersion.
    fn split(body: &[u8], cuts: &[usize]) -> (Vec<String>, Result<String, ListError>) {
        let mut splitter = ItemSplitter::default();
        let mut names = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&body.len())) {
            let fed = splitter.feed(&body[from..to], |item| {
                let pv: Volume = serde_json::from_slice(item)?;
                names.push(pv.metadata.name.unwrap());
                Ok(())
            });
            if let Err(e) = fed {
                return (names, Err(e));
            }
            from = to;
        }
        (names, splitter.finish())
    }

    proptest! {
        #[test]
        fn items_come_one_at_a_time_wherever_the_body_is_split(
            n in 0usize..6,
            cuts in proptest::collection::vec(0usize..5000, 0..16),
        ) {
            let body = volume_list(n);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < body.len()).collect();
            cuts.sort_unstable();
            let (names, rv) = split(&body, &cuts);
            prop_assert_eq!(rv.unwrap(), "4242");
            prop_assert_eq!(names, (0..n).map(|i| format!("pv-{i}")).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_body_cut_into_single_bytes_is_split_the_same() {
        let body = volume_list(3);
        let cuts: Vec<usize> = (1..body.len()).collect();
        let (names, rv) = split(&body, &cuts);
        assert_eq!(rv.unwrap(), "4242");
        assert_eq!(names, ["pv-0", "pv-1", "pv-2"]);
    }

    /// Each item is handed on as soon as its last byte arrives: the list is never held.
    #[test]
    fn an_item_is_handed_on_as_soon_as_it_is_complete() {
        let compact: serde_json::Value = serde_json::from_slice(&volume_list(3)).unwrap();
        let body = serde_json::to_vec(&compact).unwrap();
        let first_end = body
            .windows(13)
            .position(|w| w == br#"},{"metadata""#)
            .map(|at| at + 1)
            .unwrap();
        let mut splitter = ItemSplitter::default();
        let mut seen = 0;
        splitter
            .feed(&body[..first_end - 1], |_| {
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 0, "the first item is not complete yet");
        splitter
            .feed(&body[first_end - 1..first_end], |_| {
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 1, "its last byte completes it");
    }

    #[test]
    fn items_may_be_null_and_metadata_may_come_last() {
        let body = br#"{"items": null, "kind": "PersistentVolumeList", "metadata": {"resourceVersion": "7"}}"#;
        let (names, rv) = split(body, &[5, 20]);
        assert!(names.is_empty());
        assert_eq!(rv.unwrap(), "7");
        let body = br#"{"kind":"List","items":[],"metadata":{"resourceVersion":"8"}}"#;
        assert_eq!(split(body, &[]).1.unwrap(), "8");
    }

    #[test]
    fn a_list_without_resource_version_cut_short_or_malformed_fails() {
        let body = br#"{"metadata": {}, "items": []}"#;
        assert!(matches!(
            split(body, &[]).1,
            Err(ListError::NoResourceVersion)
        ));
        let body = volume_list(3);
        let (names, cut) = split(&body[..body.len() / 2], &[]);
        assert!(matches!(cut, Err(ListError::Malformed(_))), "{cut:?}");
        assert_eq!(names, ["pv-0"], "the items before the cut were handed on");
        let body = br#"{"metadata": {"resourceVersion": "1"}, "items": ["pv"]}"#;
        assert!(matches!(split(body, &[]).1, Err(ListError::Malformed(_))));
        let body = br#"{"metadata": {"resourceVersion": "1"}, "items": [{"metadata": 3}]}"#;
        assert!(matches!(split(body, &[]).1, Err(ListError::Decode(_))));
        let body = br#"{"metadata": {"resourceVersion": "1"}, "items": []} trailing"#;
        assert!(matches!(split(body, &[]).1, Err(ListError::Decode(_))));
    }

    #[tokio::test]
    async fn a_body_arriving_in_chunks_is_decoded_as_it_comes() {
        let body = volume_list(20);
        let chunks: Vec<std::io::Result<bytes::Bytes>> = body
            .chunks(97)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let reader = futures::TryStreamExt::into_async_read(futures::stream::iter(chunks));
        let mut list = StreamedList::<Volume>::new(reader);
        let mut n = 0;
        while let Some(pv) = list.next().await {
            assert_eq!(pv.metadata.name.unwrap(), format!("pv-{n}"));
            n += 1;
        }
        assert_eq!(n, 20);
        assert_eq!(list.finish().unwrap(), "4242");
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_fails_the_list() {
        let body = volume_list(4);
        let half = body.len() / 2;
        let chunks: Vec<std::io::Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::copy_from_slice(&body[..half])),
            Err(std::io::Error::other("connection reset")),
        ];
        let reader = futures::TryStreamExt::into_async_read(futures::stream::iter(chunks));
        let mut list = StreamedList::<Volume>::new(reader);
        let mut n = 0;
        while list.next().await.is_some() {
            n += 1;
        }
        assert!(n < 4);
        assert!(matches!(list.finish(), Err(ListError::Read(_))));
    }
}
