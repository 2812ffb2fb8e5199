//! Writing statuses: a merge patch of the status subresource, only when the typed status differs
//! from what the object has and from what this leader last wrote; then an Event when the
//! object's degradation changed.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use kubeprof_crds::{
    ProfilingPolicy, ProfilingPolicyStatus, ProfilingTarget, ProfilingTargetStatus, conditions,
};
use serde::Serialize;

use crate::metrics::{Failure, Metrics};

/// The object a status belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ObjectKey {
    /// A ProfilingTarget.
    Target {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A ProfilingPolicy.
    Policy {
        /// Name.
        name: String,
    },
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Target { namespace, name } => write!(f, "ProfilingTarget {namespace}/{name}"),
            Self::Policy { name } => write!(f, "ProfilingPolicy {name}"),
        }
    }
}

/// The status of an object that could not be read at all (a `DeserializeGuard` error).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UnreadableStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready` and `Degraded`, both with reason `InvalidSpec`.
    pub conditions: Vec<Condition>,
}

/// A status to write, typed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Status {
    /// A ProfilingTarget's.
    Target(ProfilingTargetStatus),
    /// A ProfilingPolicy's.
    Policy(ProfilingPolicyStatus),
    /// An unreadable object's.
    Unreadable(UnreadableStatus),
}

impl Status {
    fn conditions(&self) -> &[Condition] {
        match self {
            Self::Target(s) => &s.conditions,
            Self::Policy(s) => &s.conditions,
            Self::Unreadable(s) => &s.conditions,
        }
    }

    /// The merge patch that makes the server's status this one.
    fn merge_patch(&self) -> serde_json::Value {
        let mut status = match self {
            Self::Target(s) => serde_json::to_value(s),
            Self::Policy(s) => serde_json::to_value(s),
            Self::Unreadable(s) => serde_json::to_value(s),
        }
        .unwrap_or_default();
        // A merge patch leaves absent fields alone: a target's optional ones are cleared
        // explicitly (an unreadable target has none of them either).
        if !matches!(self, Self::Policy(_))
            && let Some(obj) = status.as_object_mut()
        {
            for field in ["lastScrapeTime", "lastError"] {
                obj.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        serde_json::json!({ "status": status })
    }
}

/// A status write the API refused.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the status of {object}: {source}")]
pub(crate) struct StatusError {
    /// Whose status.
    pub object: ObjectKey,
    /// Why.
    #[source]
    pub source: kube::Error,
}

/// Writes statuses and the Events their changes deserve, remembering what it wrote so that a
/// cache that has not caught up yet causes no second write.
pub(crate) struct StatusWriter {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    /// Behind a lock so that several writes may be in flight at once.
    written: std::sync::Mutex<HashMap<ObjectKey, Status>>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("written", &self.written().len())
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// A writer whose Events name `identity` as the reporting instance.
    pub(crate) fn new(client: Client, identity: &str, metrics: Metrics) -> Self {
        Self {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "kubeprof-operator".into(),
                    instance: Some(identity.into()),
                },
            ),
            client,
            metrics,
            written: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Status>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets what was written (another leader may have written since).
    pub(crate) fn reset(&mut self) {
        self.written().clear();
    }

    /// Makes the status of `key` equal `new`, unless it already is (`previous`, as the cache
    /// has it) or this writer wrote it last. An object that is gone is not an error.
    pub(crate) async fn write(
        &self,
        key: ObjectKey,
        reference: &ObjectReference,
        new: Status,
        previous: Option<Status>,
    ) -> Result<(), StatusError> {
        if previous.as_ref() == Some(&new) || self.written().get(&key) == Some(&new) {
            return Ok(());
        }
        let patch = Patch::Merge(new.merge_patch());
        let params = PatchParams::default();
        let result = match &key {
            ObjectKey::Target { namespace, name } => {
                Api::<DeserializeGuard<ProfilingTarget>>::namespaced(self.client.clone(), namespace)
                    .patch_status(name, &params, &patch)
                    .await
                    .map(drop)
            }
            ObjectKey::Policy { name } => {
                Api::<DeserializeGuard<ProfilingPolicy>>::all(self.client.clone())
                    .patch_status(name, &params, &patch)
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => {
                self.metrics.status_writes.inc();
                if let Some(event) =
                    event_for(previous.as_ref().map(Status::conditions), new.conditions())
                    && let Err(e) = self.recorder.publish(&event, reference).await
                {
                    // Events are best effort: the status already says it.
                    self.metrics.error(Failure::Event);
                    tracing::debug!(error = %e, "cannot publish event");
                }
                self.written().insert(key, new);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => {
                self.metrics.error(match key {
                    ObjectKey::Target { .. } => Failure::TargetStatus,
                    ObjectKey::Policy { .. } => Failure::PolicyStatus,
                });
                Err(StatusError {
                    object: key,
                    source,
                })
            }
        }
    }
}

fn degraded(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == conditions::DEGRADED)
}

/// The Event a status change deserves: degradation (and its reason changing) and recovery.
pub(crate) fn event_for(previous: Option<&[Condition]>, new: &[Condition]) -> Option<Event> {
    let before = previous.and_then(degraded);
    let after = degraded(new)?;
    if after.status == "True"
        && before.map(|b| (&b.status, &b.reason)) != Some((&after.status, &after.reason))
    {
        return Some(Event {
            type_: EventType::Warning,
            reason: after.reason.clone(),
            note: Some(after.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    if before.is_some_and(|b| b.status == "True") && after.status == "False" {
        return Some(Event {
            type_: EventType::Normal,
            reason: "Recovered".into(),
            note: Some("all jobs are published and scraping".into()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{self, ApiServer};
    use http::Method;
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    use kube::Resource;

    const WEB_STATUS: &str =
        "/apis/kubeprof.io/v1alpha1/namespaces/shop/profilingtargets/web/status";

    fn web() -> ProfilingTarget {
        let mut t = ProfilingTarget::new("web", Default::default());
        t.metadata.namespace = Some("shop".into());
        t.metadata.uid = Some("uid-web".into());
        t
    }

    fn web_key() -> ObjectKey {
        ObjectKey::Target {
            namespace: "shop".into(),
            name: "web".into(),
        }
    }

    fn degraded_status(reason: &str) -> ProfilingTargetStatus {
        ProfilingTargetStatus {
            observed_generation: Some(1),
            conditions: degraded_cond("True", reason),
            ..Default::default()
        }
    }

    fn writer() -> (StatusWriter, ApiServer, Metrics) {
        let (client, server) = mock::client();
        let metrics = Metrics::unregistered();
        (
            StatusWriter::new(client, "op-1", metrics.clone()),
            server,
            metrics,
        )
    }

    #[tokio::test]
    async fn a_degraded_target_gets_its_status_and_one_warning_event() {
        let (mut writer, mut server, metrics) = writer();
        let status = degraded_status(conditions::REASON_PORT_NOT_FOUND);
        let reference = web().object_ref(&());
        let verify = async {
            let patch = server.expect(Method::PATCH, WEB_STATUS).await;
            let written: ProfilingTargetStatus =
                serde_json::from_value(patch.body["status"].clone()).unwrap_or_default();
            assert_eq!(written, status);
            let mut answer = web();
            answer.status = Some(written);
            patch.ok(&answer);
            let event = server
                .expect(
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/shop/events",
                )
                .await;
            assert_eq!(event.body["type"], "Warning");
            assert_eq!(event.body["reason"], conditions::REASON_PORT_NOT_FOUND);
            assert_eq!(event.body["regarding"]["name"], "web");
            assert_eq!(event.body["reportingInstance"], "op-1");
            event.echo();
        };
        let (result, ()) = tokio::join!(
            writer.write(web_key(), &reference, Status::Target(status.clone()), None),
            verify
        );
        assert!(result.is_ok());
        assert_eq!(metrics.status_writes.get(), 1);

        // The cache still shows the old status: nothing is written (or told) twice.
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            writer.write(web_key(), &reference, Status::Target(status.clone()), None),
        )
        .await;
        assert!(matches!(again, Ok(Ok(()))));
        // Nor what the object already has.
        writer.reset();
        let same = writer
            .write(
                web_key(),
                &reference,
                Status::Target(status.clone()),
                Some(Status::Target(status)),
            )
            .await;
        assert!(same.is_ok());
        assert_eq!(metrics.status_writes.get(), 1);
    }

    #[tokio::test]
    async fn recovery_is_told_by_a_normal_event() {
        let (writer, mut server, _) = writer();
        let before = degraded_status(conditions::REASON_SCRAPE_FAILING);
        let after = ProfilingTargetStatus {
            conditions: degraded_cond("False", conditions::REASON_RECONCILED),
            ..before.clone()
        };
        let verify = async {
            server.expect(Method::PATCH, WEB_STATUS).await.ok(&web());
            let event = server
                .expect(
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/shop/events",
                )
                .await;
            assert_eq!(
                (&event.body["type"], &event.body["reason"]),
                (
                    &serde_json::json!("Normal"),
                    &serde_json::json!("Recovered")
                )
            );
            event.echo();
        };
        let reference = web().object_ref(&());
        let (result, ()) = tokio::join!(
            writer.write(
                web_key(),
                &reference,
                Status::Target(after),
                Some(Status::Target(before))
            ),
            verify
        );
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn a_refused_write_is_an_error_and_a_deleted_object_is_not() {
        let (writer, mut server, metrics) = writer();
        let status = Status::Target(degraded_status(conditions::REASON_PORT_NOT_FOUND));
        let reference = web().object_ref(&());
        let verify = async {
            server
                .expect(Method::PATCH, WEB_STATUS)
                .await
                .fail(500, "InternalError");
        };
        let (result, ()) = tokio::join!(
            writer.write(web_key(), &reference, status.clone(), None),
            verify
        );
        let error = result
            .err()
            .map(|e| (e.object.clone(), std::error::Error::source(&e).is_some()));
        assert_eq!(error, Some((web_key(), true)));
        assert_eq!(metrics.errors_of(Failure::TargetStatus), 1);

        let verify = async {
            server
                .expect(Method::PATCH, WEB_STATUS)
                .await
                .fail(404, "NotFound");
        };
        let (result, ()) = tokio::join!(writer.write(web_key(), &reference, status, None), verify);
        assert!(result.is_ok(), "gone: nothing to write");
        assert_eq!(metrics.errors_of(Failure::TargetStatus), 1);
        assert_eq!(metrics.status_writes.get(), 0);
    }

    fn degraded_cond(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: conditions::DEGRADED.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }]
    }

    #[test]
    fn events_tell_degradation_its_changes_and_recovery() {
        let ok = degraded_cond("False", conditions::REASON_RECONCILED);
        let port = degraded_cond("True", conditions::REASON_PORT_NOT_FOUND);
        let failing = degraded_cond("True", conditions::REASON_SCRAPE_FAILING);
        let reason = |e: Option<Event>| e.map(|e| (e.type_, e.reason));
        assert_eq!(
            reason(event_for(None, &port)),
            Some((EventType::Warning, conditions::REASON_PORT_NOT_FOUND.into()))
        );
        assert_eq!(
            reason(event_for(Some(&port), &failing)),
            Some((EventType::Warning, conditions::REASON_SCRAPE_FAILING.into()))
        );
        assert_eq!(reason(event_for(Some(&port), &port)), None);
        assert_eq!(
            reason(event_for(Some(&port), &ok)),
            Some((EventType::Normal, "Recovered".into()))
        );
        assert_eq!(reason(event_for(None, &ok)), None);
        assert_eq!(reason(event_for(Some(&ok), &ok)), None);
    }

    #[test]
    fn a_target_patch_clears_what_it_no_longer_has() {
        let patch = Status::Target(ProfilingTargetStatus::default()).merge_patch();
        assert_eq!(patch["status"]["lastError"], serde_json::Value::Null);
        assert!(
            patch["status"]
                .as_object()
                .is_some_and(|o| o.contains_key("lastError"))
        );
        let patch = Status::Policy(ProfilingPolicyStatus::default()).merge_patch();
        assert!(
            patch["status"]
                .as_object()
                .is_some_and(|o| !o.contains_key("lastError"))
        );
    }
}
