//! The profiles sinks refused before sending (the store would have refused them), per job and
//! sink, so that the health report can tell the job's target which labels or sizes to fix.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use kubeprof_crds::health::RefusedProfile;

/// Refusals by (job id, sink).
type ByJobAndSink = BTreeMap<(Arc<str>, String), RefusedProfile>;

/// The last refusal of each (job, sink) whose later profiles that sink has not sent since.
#[derive(Clone, Debug, Default)]
pub struct Refusals(Arc<Mutex<ByJobAndSink>>);

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByJobAndSink> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A profile of `job` was refused.
    pub fn refused(&self, job: &Arc<str>, refusal: RefusedProfile) {
        self.lock()
            .insert((job.clone(), refusal.sink.clone()), refusal);
    }

    /// `sink` sent profiles of `jobs`: their refusals there are over.
    pub fn sent<'a>(&self, sink: &str, jobs: impl IntoIterator<Item = &'a Arc<str>>) {
        let mut map = self.lock();
        if map.is_empty() {
            return;
        }
        for job in jobs {
            map.remove(&(job.clone(), sink.to_owned()));
        }
    }

    /// The refusals of the jobs `keep` accepts, one per job (the first sink's), for the health
    /// report; those of other jobs (gone from the job set) are forgotten, so the map stays as
    /// small as the jobs times the sinks.
    pub fn by_job(&self, keep: impl Fn(&str) -> bool) -> BTreeMap<String, RefusedProfile> {
        let mut map = self.lock();
        map.retain(|(job, _), _| keep(job));
        let mut out = BTreeMap::new();
        for ((job, _), r) in map.iter() {
            out.entry(job.to_string()).or_insert_with(|| r.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use kubeprof_crds::{health::SinkRefusal, relabel::Labels};

    use super::*;

    #[test]
    fn a_refusal_lasts_until_that_sink_sends_the_job_again_or_the_job_goes() {
        let refusals = Refusals::default();
        let (a, b): (Arc<str>, Arc<str>) = ("job-a".into(), "job-b".into());
        let labels = Labels::from([("__name__".to_string(), "memory".to_string())]);
        refusals.refused(
            &a,
            RefusedProfile::new("p/pyro", SinkRefusal::TooManyLabels, &labels),
        );
        refusals.refused(
            &b,
            RefusedProfile::new("p/pyro", SinkRefusal::TooManySamples, &labels),
        );
        let all = refusals.by_job(|_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(all["job-a"].reason, SinkRefusal::TooManyLabels);
        // Another sink sending job-a changes nothing; the refusing sink sending it clears it.
        refusals.sent("p/file", [&a]);
        assert_eq!(refusals.by_job(|_| true).len(), 2);
        refusals.sent("p/pyro", [&a]);
        assert_eq!(
            refusals.by_job(|_| true).keys().collect::<Vec<_>>(),
            ["job-b"]
        );
        // A job no longer in the set is forgotten.
        assert!(refusals.by_job(|job| job != "job-b").is_empty());
        assert!(refusals.by_job(|_| true).is_empty());
    }
}
