//! The mock API server of the middle test tier (as controller-rs' `ApiServerVerifier`): a
//! `kube::Client` whose requests arrive here one by one, to be checked and answered. A request
//! that does not come within a second fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixture

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde::Serialize;
use tower_test::mock::{self, Handle, SendResponse};

/// How long a test waits for a request it expects.
const PATIENCE: Duration = Duration::from_secs(1);

/// The server side of a mock client.
pub(crate) struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// A client talking to a new mock API server.
pub(crate) fn client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// One request, to answer.
pub(crate) struct Call {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// The body as JSON (`Null` when empty).
    pub body: serde_json::Value,
    send: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The next request; panics when none comes within a second.
    pub(crate) async fn next(&mut self) -> Call {
        let (request, send) = tokio::time::timeout(PATIENCE, self.0.next_request())
            .await
            .expect("the expected request did not come within a second")
            .expect("the client went away");
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        Call {
            method,
            uri,
            body,
            send,
        }
    }

    /// The next request, which must be `method` on `path` (the URI up to its query).
    pub(crate) async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path()),
            (&method, path),
            "unexpected request {} {}",
            call.method,
            call.uri
        );
        call
    }
}

impl Call {
    /// The URI without its query.
    pub(crate) fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// Answers 200 with `body`.
    pub(crate) fn ok(self, body: &impl Serialize) {
        self.respond(StatusCode::OK, serde_json::to_vec(body).unwrap());
    }

    /// Answers 200 with the request's own body (what a server accepting a write returns).
    pub(crate) fn echo(self) {
        let body = serde_json::to_vec(&self.body).unwrap();
        self.respond(StatusCode::OK, body);
    }

    /// Answers with a Kubernetes `Status` error.
    pub(crate) fn fail(self, code: u16, reason: &str) {
        let status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": format!("mock: {reason}"),
            "reason": reason,
            "code": code,
        });
        self.respond(
            StatusCode::from_u16(code).unwrap(),
            serde_json::to_vec(&status).unwrap(),
        );
    }

    /// Answers a watch with `events` (`(type, object)`), then ends the stream.
    pub(crate) fn watch_events(self, events: &[(&str, serde_json::Value)]) {
        let mut body = Vec::new();
        for (type_, object) in events {
            serde_json::to_writer(
                &mut body,
                &serde_json::json!({ "type": type_, "object": object }),
            )
            .unwrap();
            body.push(b'\n');
        }
        self.respond(StatusCode::OK, body);
    }

    fn respond(self, status: StatusCode, body: Vec<u8>) {
        self.send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(body))
                .unwrap(),
        );
    }
}
