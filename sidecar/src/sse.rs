//! Server-Sent Events as the sidecar writes them: the change feed and the OFREP push
//! connection.
//!
//! A flip sends an event on every open feed at once, so each event costs as little as it can:
//! it is written once into one buffer of the right size and handed to hyper as one frame, and
//! a connection's keep-alive comment comes at a fixed interval instead of from a timer that is
//! reset after every event (which is what axum's `Sse` does, and what a thousand feeds paid
//! for on every flip).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

/// How often a feed sends a comment, whether or not it sent events meanwhile: the listener
/// closes connections idle for 60 s, and a client notices a dead connection by its silence.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

const KEEP_ALIVE_COMMENT: &[u8] = b":keep-alive\n\n";

/// One event: `id: ID` when there is one, then `data: LINE` for each line of `data`, then the
/// blank line that ends it.
pub fn event(id: Option<&str>, data: &str) -> Bytes {
    let lines = data.split('\n');
    let mut frame = Vec::with_capacity(id.map_or(0, |id| id.len() + 5) + data.len() + 16);
    if let Some(id) = id {
        write_id(&mut frame, id);
    }
    for line in lines {
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(line.as_bytes());
        frame.push(b'\n');
    }
    frame.push(b'\n');
    Bytes::from(frame)
}

/// `id: ID\n`. An id is one line by construction (the feed's ids are `EPOCH:VERSION`); a line
/// break in one would end the field, so it is dropped rather than sent.
pub fn write_id(frame: &mut Vec<u8>, id: &str) {
    frame.extend_from_slice(b"id: ");
    frame.extend(id.bytes().filter(|b| *b != b'\n' && *b != b'\r'));
    frame.push(b'\n');
}

/// A response that streams `events` (each a whole event, as [`event`] writes them) with a
/// keep-alive comment every [`KEEP_ALIVE`]; it ends when `events` ends.
pub fn response<S>(events: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let start = tokio::time::Instant::now() + KEEP_ALIVE;
    let mut keep_alive = tokio::time::interval_at(start, KEEP_ALIVE);
    // A connection that could not be written for a while owes one comment, not a burst.
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = WithKeepAlive {
        events: Box::pin(events),
        keep_alive,
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

struct WithKeepAlive<S> {
    events: Pin<Box<S>>,
    keep_alive: tokio::time::Interval,
}

impl<S: Stream<Item = Bytes>> Stream for WithKeepAlive<S> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Events first: a feed that ends ends the response, whatever the timer says.
        if let Poll::Ready(next) = self.events.as_mut().poll_next(cx) {
            return Poll::Ready(next.map(Ok));
        }
        match self.keep_alive.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE_COMMENT)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[test]
    fn an_event_gives_each_line_of_its_data_a_field_and_ends_with_a_blank_line() {
        assert_eq!(
            &event(Some("7:v2"), "{\"a\":1}")[..],
            b"id: 7:v2\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(&event(None, "one\ntwo")[..], b"data: one\ndata: two\n\n");
        assert_eq!(&event(Some("a\nb"), "x")[..], b"id: ab\ndata: x\n\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_feed_sends_keep_alives_and_the_response_ends_with_the_feed() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let response = response(events);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut body = response.into_body().into_data_stream();
        tx.send(event(Some("1:v1"), "{}"))
            .expect("the body is open");
        let first = body.next().await.expect("an event").expect("no error");
        assert_eq!(&first[..], b"id: 1:v1\ndata: {}\n\n");
        // Nothing to send: after the interval (the clock is paused, so it jumps), a comment.
        let comment = body.next().await.expect("a comment").expect("no error");
        assert_eq!(&comment[..], KEEP_ALIVE_COMMENT);
        drop(tx);
        assert!(
            body.next().await.is_none(),
            "the response ends with its feed"
        );
    }
}
