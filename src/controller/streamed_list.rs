//! A whole list of a resource, in one request served from the API server's watch cache
//! (`resourceVersion=0`), decoded item by item as its body arrives.
//!
//! Paged lists are served from etcd: 200 pages of 100 000 volumes took 11–13 s where one
//! unpaged list from the watch cache took about 3. But that one body is 356 MB of JSON, and
//! kube's `Api::list` holds a whole body before decoding it; here the body is read a buffer at
//! a time and each item is handed on as soon as it is decoded, so no more than one item and a
//! few buffers are ever held.

use std::fmt;
use std::io::{BufReader, Read};
use std::marker::PhantomData;

use futures::AsyncBufRead;
use kube::api::ListParams;
use kube::{Client, core::Request};
use serde::Deserialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::io::SyncIoBridge;

/// Decoded items waiting for the watch to take them. Each is a whole object as the API sent
/// it (less what `Deserialize` of the cached shapes skips), so this bounds what the list
/// holds in memory beyond the caches.
const ITEMS_IN_FLIGHT: usize = 64;

/// The body is read from the connection in pieces of this size.
const READ_BUFFER: usize = 64 * 1024;

/// Why a list failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Request(#[from] kube::Error),
    #[error("list response: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("list response has no metadata.resourceVersion")]
    NoResourceVersion,
    #[error("list decoding stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<ListError> for kube::Error {
    fn from(e: ListError) -> kube::Error {
        match e {
            ListError::Request(e) => e,
            ListError::Decode(e) => kube::Error::SerdeError(e),
            other => kube::Error::Service(Box::new(other)),
        }
    }
}

/// A list in progress: its items as they are decoded, then its resourceVersion.
pub struct StreamedList<K> {
    items: mpsc::Receiver<K>,
    done: Option<JoinHandle<Result<String, ListError>>>,
}

impl<K> StreamedList<K> {
    /// The next item; `None` once the list is complete (then see [`Self::finish`]).
    pub async fn next(&mut self) -> Option<K> {
        self.items.recv().await
    }

    /// The list's resourceVersion once every item was taken, or why it failed (items taken
    /// before a failure were only part of the list).
    pub async fn finish(mut self) -> Result<String, ListError> {
        self.items.close();
        match self.done.take() {
            Some(done) => done.await?,
            None => Err(ListError::NoResourceVersion),
        }
    }
}

impl<K> Drop for StreamedList<K> {
    fn drop(&mut self) {
        // The decoding thread stops at its next item once the receiver is gone; it may be
        // waiting for the body, which ends it too.
        self.items.close();
    }
}

/// Starts listing every object at `url_path` (e.g. `/api/v1/persistentvolumes`) from the
/// watch cache; returns once the response headers are in.
pub async fn list<K>(client: &Client, url_path: &str) -> Result<StreamedList<K>, ListError>
where
    K: DeserializeOwned + Send + 'static,
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
    Ok(decode_in_background(body))
}

/// Decodes `body` on a blocking thread (serde_json reads from a blocking `Read`), sending
/// each item as it is decoded.
fn decode_in_background<K>(body: impl AsyncBufRead + Send + 'static) -> StreamedList<K>
where
    K: DeserializeOwned + Send + 'static,
{
    let body = SyncIoBridge::new(Box::pin(body).compat());
    let (tx, items) = mpsc::channel(ITEMS_IN_FLIGHT);
    let done = tokio::task::spawn_blocking(move || {
        let reader = BufReader::with_capacity(READ_BUFFER, body);
        decode_list(reader, |item| tx.blocking_send(item).is_ok())
    });
    StreamedList {
        items,
        done: Some(done),
    }
}

/// Decodes a list (`{"kind": …, "metadata": {"resourceVersion": …}, "items": […]}`) from
/// `body`, handing each item to `each` as soon as it is decoded (`each` returns false to
/// stop), and returns the list's resourceVersion.
pub fn decode_list<K, R>(body: R, mut each: impl FnMut(K) -> bool) -> Result<String, ListError>
where
    K: DeserializeOwned,
    R: Read,
{
    let mut de = serde_json::Deserializer::from_reader(body);
    let rv = ListSeed {
        each: &mut each,
        item: PhantomData,
    }
    .deserialize(&mut de)?;
    de.end()?;
    rv.filter(|rv| !rv.is_empty())
        .ok_or(ListError::NoResourceVersion)
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Metadata,
    Items,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

/// The list object: its resourceVersion kept, its items handed on, the rest skipped.
struct ListSeed<'a, K, F> {
    each: &'a mut F,
    item: PhantomData<fn() -> K>,
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> DeserializeSeed<'de> for ListSeed<'_, K, F> {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> Visitor<'de> for ListSeed<'_, K, F> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rv = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Metadata => rv = map.next_value::<ListMeta>()?.resource_version,
                Field::Items => map.next_value_seed(ItemsSeed {
                    each: &mut *self.each,
                    item: PhantomData,
                })?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(rv)
    }
}

/// The `items` array (or `null`), each element decoded and handed on alone.
struct ItemsSeed<'a, K, F> {
    each: &'a mut F,
    item: PhantomData<fn() -> K>,
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> DeserializeSeed<'de> for ItemsSeed<'_, K, F> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, K: DeserializeOwned, F: FnMut(K) -> bool> Visitor<'de> for ItemsSeed<'_, K, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list's items")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<K>()? {
            if !(self.each)(item) {
                return Err(de::Error::custom("the list's receiver went away"));
            }
        }
        Ok(())
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
                                 "annotations": {"note": "a \"quoted\" ] } [ {"},
                                 "managedFields": [{"manager": "kcm", "fieldsV1": {"f:spec": {}}}]},
                    "spec": {"nfs": {"server": "filer", "path": format!("/export/{i}")}},
                    "status": {"phase": "Bound"}
                })
            })
            .collect();
        serde_json::to_vec(&json!({
            "kind": "PersistentVolumeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "4242"},
            "items": items,
        }))
        .unwrap()
    }

    /// A reader that hands out `body` in the given pieces (and records how far it was read).
    struct Pieces {
        body: Vec<u8>,
        cuts: Vec<usize>,
        at: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let end = self
                .cuts
                .iter()
                .copied()
                .find(|&c| c > self.at)
                .unwrap_or(self.body.len())
                .min(self.at + buf.len());
            let n = end - self.at;
            buf[..n].copy_from_slice(&self.body[self.at..end]);
            self.at = end;
            Ok(n)
        }
    }

    proptest! {
        #[test]
        fn items_come_one_at_a_time_wherever_the_body_is_split(
            n in 0usize..6,
            cuts in proptest::collection::vec(0usize..4000, 0..12),
        ) {
            let body = volume_list(n);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < body.len()).collect();
            cuts.sort_unstable();
            let mut names = Vec::new();
            let rv = decode_list(Pieces { body, cuts, at: 0 }, |pv: Volume| {
                names.push(pv.metadata.name.unwrap());
                true
            })
            .unwrap();
            prop_assert_eq!(rv, "4242");
            prop_assert_eq!(names, (0..n).map(|i| format!("pv-{i}")).collect::<Vec<_>>());
        }
    }

    /// Each item is handed on before the rest of the body is read: the decoder never holds
    /// the whole list.
    #[test]
    fn an_item_is_handed_on_before_the_next_one_is_read() {
        let body = volume_list(50);
        let len = body.len();
        let reader = std::rc::Rc::new(std::cell::RefCell::new(Pieces {
            body,
            cuts: (1..len).collect(),
            at: 0,
        }));
        struct Shared(std::rc::Rc<std::cell::RefCell<Pieces>>);
        impl Read for Shared {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.borrow_mut().read(buf)
            }
        }
        let mut read_at_first = None;
        decode_list(Shared(reader.clone()), |_: Volume| {
            read_at_first.get_or_insert(reader.borrow().at);
            true
        })
        .unwrap();
        let first = read_at_first.unwrap();
        assert!(
            first < len / 10,
            "read {first} of {len} bytes before the first item"
        );
    }

    #[test]
    fn items_may_be_null_and_metadata_may_come_last() {
        let body = br#"{"items": null, "kind": "PersistentVolumeList", "metadata": {"resourceVersion": "7"}}"#;
        let rv = decode_list(&body[..], |_: Volume| panic!("no items")).unwrap();
        assert_eq!(rv, "7");
    }

    #[test]
    fn a_list_without_resource_version_or_cut_short_fails() {
        let body = br#"{"metadata": {}, "items": []}"#;
        assert!(matches!(
            decode_list(&body[..], |_: Volume| true),
            Err(ListError::NoResourceVersion)
        ));
        let body = volume_list(3);
        let mut seen = 0;
        let cut = decode_list(&body[..body.len() / 2], |_: Volume| {
            seen += 1;
            true
        });
        assert!(matches!(cut, Err(ListError::Decode(_))), "{cut:?}");
        assert_eq!(seen, 1, "the items before the cut were handed on");
    }

    #[test]
    fn a_receiver_that_goes_away_stops_decoding() {
        let body = volume_list(5);
        let mut seen = 0;
        let stopped = decode_list(&body[..], |_: Volume| {
            seen += 1;
            seen < 2
        });
        assert!(stopped.is_err());
        assert_eq!(seen, 2);
    }

    #[tokio::test]
    async fn a_body_arriving_in_chunks_is_decoded_in_the_background() {
        let body = volume_list(20);
        let chunks: Vec<std::io::Result<bytes::Bytes>> = body
            .chunks(97)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let reader = futures::TryStreamExt::into_async_read(futures::stream::iter(chunks));
        let mut list = decode_in_background::<Volume>(reader);
        let mut n = 0;
        while let Some(pv) = list.next().await {
            assert_eq!(pv.metadata.name.unwrap(), format!("pv-{n}"));
            n += 1;
        }
        assert_eq!(n, 20);
        assert_eq!(list.finish().await.unwrap(), "4242");
    }
}
