//! A file's targets as scrape jobs: one per address and enabled profile type.

use kubeprof_crds::{
    constants::labels,
    job::{CredentialRef, JobOrigin, OriginKind, ScrapeAuth, ScrapeJob, ScrapeTls},
};

use super::Config;
use crate::sources::{EbpfPlan, EbpfTargets, JobSet, StandaloneTargets};

/// This machine's name, the `node` label of its eBPF profiles.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

impl Config {
    /// The jobs and sinks this configuration describes.
    pub fn job_set(&self) -> JobSet {
        let all_sinks: Vec<String> = self.sinks.iter().map(|s| s.name.clone()).collect();
        let mut jobs = Vec::new();
        for t in &self.targets {
            let cpu_seconds = u32::try_from(t.interval.std().as_secs())
                .unwrap_or(u32::MAX)
                .max(1);
            let profiles = t
                .profiles
                .resolve(&kubeprof_crds::ProfileKind::ALL, cpu_seconds);
            let file = |f: &Option<String>| f.as_ref().map(CredentialRef::from_file);
            let auth = match (&t.bearer_token_file, &t.basic_auth) {
                (Some(f), _) => Some(ScrapeAuth::Bearer {
                    token: CredentialRef::from_file(f),
                }),
                (None, Some(b)) => Some(ScrapeAuth::Basic {
                    username: CredentialRef::literal(&b.username),
                    password: CredentialRef::from_file(&b.password_file),
                }),
                (None, None) => None,
            };
            let tls = t.tls_config.as_ref().map(|c| ScrapeTls {
                ca: file(&c.ca_file),
                cert: file(&c.cert_file),
                key: file(&c.key_file),
                server_name: c.server_name.clone(),
                insecure_skip_verify: c.insecure_skip_verify,
            });
            for address in &t.addresses {
                let origin = JobOrigin {
                    kind: OriginKind::Static,
                    namespace: String::new(),
                    name: t.name.clone(),
                };
                for profile in &profiles {
                    let mut l = t.labels.clone();
                    l.insert(labels::ADDRESS.into(), address.clone());
                    l.insert(labels::SCHEME.into(), t.scheme.as_str().into());
                    l.insert(labels::PROFILE_PATH.into(), profile.path.clone());
                    l.insert(labels::JOB.into(), t.name.clone());
                    kubeprof_crds::labels::mark_delta(&mut l, profile);
                    jobs.push(ScrapeJob {
                        id: ScrapeJob::identity(&origin, address, &profile.name, &profile.path),
                        origin: origin.clone(),
                        address: address.clone(),
                        scheme: t.scheme,
                        profile: profile.clone(),
                        params: t.params.clone(),
                        interval: t.interval,
                        timeout: t.scrape_timeout,
                        labels: l,
                        relabelings: t.relabelings.clone(),
                        external_labels: self.external_labels.clone(),
                        auth: auth.clone(),
                        tls: tls.clone(),
                        sinks: if t.sinks.is_empty() {
                            all_sinks.clone()
                        } else {
                            t.sinks.clone()
                        },
                        max_profile_bytes: Some(self.scrape.max_profile_bytes),
                    });
                }
            }
        }
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        let ebpf = self.ebpf.as_ref().map(|e| EbpfPlan {
            sample_rate: e.sample_rate,
            period: e.period.std(),
            node: hostname(),
            targets: EbpfTargets::Standalone(StandaloneTargets {
                processes: e.processes.clone(),
                labels: e.labels.clone(),
                relabelings: e.relabelings.clone(),
                external_labels: self.external_labels.clone(),
                sinks: if e.sinks.is_empty() {
                    all_sinks.clone()
                } else {
                    e.sinks.clone()
                },
            }),
        });
        JobSet {
            jobs,
            sinks: self.sinks.clone(),
            ebpf,
        }
    }
}
