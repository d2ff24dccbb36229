//! A list response's body, encoded a chunk at a time as the client reads it: a list of
//! 30,000 pods is never held as one buffer (nor as one `Value`), and its first bytes
//! leave before its last item is encoded. The items are shared with the watch cache.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::{json, Value};

use crate::registry::Resource;
use crate::{convert, table};

/// Bytes encoded per frame (more when one item is larger).
const CHUNK: usize = 64 << 10;

/// How each item is written.
pub enum Form {
    /// The object itself, in a `<Kind>List`.
    Object,
    /// Its metadata, in a `PartialObjectMetadataList`.
    Partial,
    /// A Table row; `include` is the request's `includeObject`.
    Row { include: Option<String> },
}

pub struct ListBody {
    r: &'static Resource,
    form: Form,
    head: Option<Bytes>,
    items: std::vec::IntoIter<Arc<Value>>,
    first: bool,
    done: bool,
}

impl ListBody {
    /// The body of the list of `items` at `resource_version`, with its continue token
    /// if any. A list that fits in one chunk is sent whole, with its length.
    pub fn body(
        r: &'static Resource,
        form: Form,
        items: Vec<Arc<Value>>,
        resource_version: &str,
        cont: Option<&str>,
    ) -> crate::http::Body {
        use http_body_util::BodyExt;
        let mut b = ListBody::new(r, form, items, resource_version, cont);
        let mut first = b.head.take().expect("a new body has its head").to_vec();
        b.fill(&mut first);
        match b.done {
            true => http_body_util::Full::new(Bytes::from(first)).boxed(),
            false => {
                b.head = Some(first.into());
                b.boxed()
            }
        }
    }

    fn new(
        r: &'static Resource,
        form: Form,
        items: Vec<Arc<Value>>,
        resource_version: &str,
        cont: Option<&str>,
    ) -> ListBody {
        let mut meta = json!({"resourceVersion": resource_version});
        if let Some(c) = cont {
            meta["continue"] = json!(c);
        }
        let head = match &form {
            Form::Object => json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta}),
            Form::Partial => {
                json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
            }
            Form::Row { .. } => json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                "columnDefinitions": table::column_definitions(r)}),
        };
        // The head object, left open for its array: `{...,"items":[`.
        let mut b = serde_json::to_vec(&head).expect("JSON values serialize");
        b.pop();
        b.extend_from_slice(if matches!(form, Form::Row { .. }) { b",\"rows\":[" } else { b",\"items\":[" });
        ListBody { r, form, head: Some(b.into()), items: items.into_iter(), first: true, done: false }
    }

    /// Encodes items into `buf` until it holds a chunk, or the list's end.
    fn fill(&mut self, buf: &mut Vec<u8>) {
        while buf.len() < CHUNK {
            let Some(o) = self.items.next() else {
                buf.extend_from_slice(b"]}");
                self.done = true;
                return;
            };
            if !std::mem::take(&mut self.first) {
                buf.push(b',');
            }
            self.encode(&o, buf);
        }
    }

    fn encode(&self, o: &Value, out: &mut Vec<u8>) {
        let converted;
        let o = if convert::needs_view(self.r, o) {
            converted = convert::to_view(self.r, o.clone());
            &converted
        } else {
            o
        };
        let written = match &self.form {
            Form::Object => serde_json::to_writer(&mut *out, o),
            Form::Partial => serde_json::to_writer(&mut *out, &table::partial_metadata(o)),
            Form::Row { include } => serde_json::to_writer(&mut *out, &table::row(self.r, o, include.as_deref())),
        };
        written.expect("JSON values serialize");
    }
}

impl hyper::body::Body for ListBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let mut buf = Vec::with_capacity(CHUNK + (CHUNK >> 2));
        self.fill(&mut buf);
        Poll::Ready(Some(Ok(Frame::data(buf.into()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.head.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(b: crate::http::Body) -> Value {
        let bytes = b.collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }

    fn pods(n: usize) -> Vec<Arc<Value>> {
        (0..n)
            .map(|i| {
                Arc::new(json!({"kind": "Pod", "apiVersion": "v1",
                    "metadata": {"name": format!("p{i}"), "namespace": "default", "resourceVersion": "7"},
                    "spec": {"containers": [{"name": "c", "image": "x".repeat(100)}]}}))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_list_spanning_many_frames_is_one_json_document() {
        let pods_r = crate::registry::find("", "v1", "pods").unwrap();
        let items = pods(2000);
        let l = body(ListBody::body(pods_r, Form::Object, items.clone(), "42", Some("tok"))).await;
        assert_eq!(l["kind"], "PodList");
        assert_eq!(l["apiVersion"], "v1");
        assert_eq!(l["metadata"], json!({"resourceVersion": "42", "continue": "tok"}));
        let got = l["items"].as_array().unwrap();
        assert_eq!(got.len(), 2000);
        assert_eq!(got[1999], *items[1999]);
        let empty = body(ListBody::body(pods_r, Form::Partial, vec![], "5", None)).await;
        assert_eq!(
            empty,
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "5"}, "items": []})
        );
        let t = body(ListBody::body(pods_r, Form::Row { include: None }, pods(3), "5", None)).await;
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["rows"].as_array().unwrap().len(), 3);
        assert_eq!(t["rows"][2]["cells"][0], "p2");
        assert_eq!(t["rows"][2]["object"]["kind"], "PartialObjectMetadata");
        assert!(t["columnDefinitions"].as_array().is_some_and(|c| !c.is_empty()));
    }
}
