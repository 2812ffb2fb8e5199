//! Which profiles to pull from an endpoint, with the type names Grafana Alloy and Parca use.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The built-in Go profile types.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// CPU time, sampled over `seconds` (`/debug/pprof/profile`); sent as `process_cpu`.
    Cpu,
    /// Allocations and in-use heap (`/debug/pprof/allocs`); carries alloc_* and inuse_* types.
    Memory,
    /// Goroutine stacks (`/debug/pprof/goroutine`).
    Goroutine,
    /// Mutex contention (`/debug/pprof/mutex`), cumulative.
    Mutex,
    /// Blocking on synchronisation (`/debug/pprof/block`), cumulative.
    Block,
}

impl ProfileKind {
    /// Every built-in kind, in a stable order.
    pub const ALL: [ProfileKind; 5] = [
        Self::Cpu,
        Self::Memory,
        Self::Goroutine,
        Self::Mutex,
        Self::Block,
    ];

    /// The name written in the API (`cpu`, `memory`, ...).
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Goroutine => "goroutine",
            Self::Mutex => "mutex",
            Self::Block => "block",
        }
    }

    /// The `__name__` label value profiles of this kind carry (as Alloy sends them).
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::Cpu => "process_cpu",
            other => other.api_name(),
        }
    }

    /// The HTTP path Go's `net/http/pprof` serves this kind at.
    pub fn default_path(self) -> &'static str {
        match self {
            Self::Cpu => "/debug/pprof/profile",
            // allocs, not heap, as Alloy and Parca do: the same data, sampled since start.
            Self::Memory => "/debug/pprof/allocs",
            Self::Goroutine => "/debug/pprof/goroutine",
            Self::Mutex => "/debug/pprof/mutex",
            Self::Block => "/debug/pprof/block",
        }
    }

    /// Whether the endpoint returns values cumulative since process start, which the scraper
    /// turns into deltas unless told otherwise.
    pub fn cumulative(self) -> bool {
        matches!(self, Self::Memory | Self::Mutex | Self::Block)
    }
}

impl std::fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.api_name())
    }
}

/// An endpoint beyond Go's `net/http/pprof` that Alloy's `pyroscope.scrape` knows by name
/// (grafana/alloy `internal/component/pyroscope/scrape/scrape.go`, its `profiling_config`
/// defaults and `target.go`, which sends godeltaprof under the plain type's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownEndpoint {
    /// The name in annotations and `profiles.custom[].name` (`fgprof`, `godeltaprof_memory`).
    pub name: &'static str,
    /// The `__name__` profiles are sent with: godeltaprof lands in the same profile types as
    /// the pull profiles (`memory`, `mutex`, `block`).
    pub metric_name: &'static str,
    /// Default HTTP path.
    pub path: &'static str,
    /// The endpoint samples over `?seconds=N`, like the CPU profile (fgprof).
    pub sampled: bool,
    /// The endpoint already returns deltas (godeltaprof): no client-side delta, and
    /// `__delta__="false"` so Pyroscope does not compute one either.
    pub pre_delta: bool,
}

/// The endpoints [`KnownEndpoint`] describes.
pub const KNOWN_ENDPOINTS: [KnownEndpoint; 4] = [
    KnownEndpoint {
        name: "fgprof",
        metric_name: "fgprof",
        path: "/debug/fgprof",
        sampled: true,
        pre_delta: false,
    },
    KnownEndpoint {
        name: "godeltaprof_memory",
        metric_name: "memory",
        path: "/debug/pprof/delta_heap",
        sampled: false,
        pre_delta: true,
    },
    KnownEndpoint {
        name: "godeltaprof_mutex",
        metric_name: "mutex",
        path: "/debug/pprof/delta_mutex",
        sampled: false,
        pre_delta: true,
    },
    KnownEndpoint {
        name: "godeltaprof_block",
        metric_name: "block",
        path: "/debug/pprof/delta_block",
        sampled: false,
        pre_delta: true,
    },
];

impl KnownEndpoint {
    /// The known endpoint called `name`, if any.
    pub fn named(name: &str) -> Option<&'static KnownEndpoint> {
        KNOWN_ENDPOINTS.iter().find(|k| k.name == name)
    }
}

/// The CPU profile of an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuProfile {
    /// Pull this profile. Unset: the governing policy's `defaults.profileTypes` (all five unless it
    /// names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// HTTP path. Default `/debug/pprof/profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = crate::limits::MAX_PATH_LENGTH))]
    pub path: Option<String>,
    /// Length of each CPU profile in whole seconds (`?seconds=N`). Default: the interval, so
    /// consecutive profiles cover CPU time without gaps. The request may last `seconds` plus
    /// the scrape timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub seconds: Option<u32>,
}

/// A profile type pulled with one request per interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSettings {
    /// Pull this profile. Unset: the governing policy's `defaults.profileTypes` (all five unless it
    /// names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// HTTP path. Default: the Go `net/http/pprof` path of the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = crate::limits::MAX_PATH_LENGTH))]
    pub path: Option<String>,
    /// Send the difference between consecutive scrapes of the cumulative values (mutex,
    /// block and the alloc_* types of memory). Default true for those types; ignored for others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<bool>,
}

/// Another pprof endpoint, such as fgprof or godeltaprof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomProfile {
    /// Profile type name, sent as `__name__`. The names Alloy knows get its defaults:
    /// `fgprof` is sampled over `seconds` (default: as CPU); `godeltaprof_memory`,
    /// `godeltaprof_mutex` and `godeltaprof_block` are sent as `memory`, `mutex` and `block`
    /// with `__delta__="false"`, their `delta` ignored (the endpoint already returns deltas).
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"), length(max = crate::limits::MAX_DNS_LABEL_LENGTH))]
    pub name: String,
    /// Pull this profile (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// HTTP path.
    #[schemars(regex(pattern = r"^/"), length(max = crate::limits::MAX_PATH_LENGTH))]
    pub path: String,
    /// The endpoint returns cumulative values to turn into deltas (default false; godeltaprof
    /// endpoints already return deltas).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// For endpoints that sample over time (fgprof): the `seconds` parameter. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub seconds: Option<u32>,
}

/// Which profiles to pull. A type that is not mentioned follows the policy defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Profiles {
    /// CPU time (`process_cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuProfile>,
    /// Allocations and in-use memory (`memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ProfileSettings>,
    /// Goroutines (`goroutine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goroutine: Option<ProfileSettings>,
    /// Mutex contention (`mutex`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutex: Option<ProfileSettings>,
    /// Blocking (`block`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<ProfileSettings>,
    /// Other endpoints. Names must be unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]), length(max = crate::limits::MAX_CUSTOM_PROFILES))]
    pub custom: Vec<CustomProfile>,
}

/// One profile type of an endpoint, with every default applied: what the scraper pulls.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedProfile {
    /// The `__name__` value: `process_cpu`, `memory`, ..., or a custom name.
    pub name: String,
    /// The built-in kind, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ProfileKind>,
    /// HTTP path.
    pub path: String,
    /// Turn cumulative values into deltas.
    pub delta: bool,
    /// `?seconds=N` for profiles sampled over time; the request may last N plus the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    /// The endpoint already returns deltas (godeltaprof): nothing to compute, but the store
    /// must be told, like for [`Self::delta`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre_delta: bool,
}

impl ResolvedProfile {
    /// Whether the profiles sent hold deltas of cumulative values (computed by the scraper or
    /// by the target), so they carry `__delta__="false"`: Pyroscope must not delta them again.
    pub fn sends_deltas(&self) -> bool {
        self.delta || self.pre_delta
    }

    /// A profile of a known or custom endpoint called `name` (an annotation's type or
    /// `profiles.custom[].name`), with Alloy's defaults for the names it knows.
    /// `sampled_seconds` is the `seconds` of a sampled endpoint when none is given.
    pub fn custom(
        name: &str,
        path: Option<&str>,
        delta: bool,
        seconds: Option<u32>,
        sampled_seconds: u32,
    ) -> Self {
        match KnownEndpoint::named(name) {
            Some(k) => Self {
                name: k.metric_name.to_owned(),
                kind: None,
                path: path.unwrap_or(k.path).to_owned(),
                delta: delta && !k.pre_delta,
                seconds: seconds.or(k.sampled.then_some(sampled_seconds.max(1))),
                pre_delta: k.pre_delta,
            },
            None => Self {
                name: name.to_owned(),
                kind: None,
                path: path.map_or_else(|| format!("/debug/pprof/{name}"), str::to_owned),
                delta,
                seconds,
                pre_delta: false,
            },
        }
    }
}

impl Profiles {
    /// The settings of a built-in kind, in the shape common to all of them.
    fn settings(&self, kind: ProfileKind) -> (Option<bool>, Option<&str>, Option<bool>) {
        fn of(s: &Option<ProfileSettings>) -> (Option<bool>, Option<&str>, Option<bool>) {
            s.as_ref()
                .map(|s| (s.enabled, s.path.as_deref(), s.delta))
                .unwrap_or_default()
        }
        match kind {
            ProfileKind::Cpu => self
                .cpu
                .as_ref()
                .map(|c| (c.enabled, c.path.as_deref(), None))
                .unwrap_or_default(),
            ProfileKind::Memory => of(&self.memory),
            ProfileKind::Goroutine => of(&self.goroutine),
            ProfileKind::Mutex => of(&self.mutex),
            ProfileKind::Block => of(&self.block),
        }
    }

    /// Every enabled profile with defaults applied. `enabled_by_default` says which built-in
    /// kinds are on when the user did not say; `default_cpu_seconds` is the CPU profile length
    /// when `cpu.seconds` is unset (normally the interval, in whole seconds, at least 1).
    pub fn resolve(
        &self,
        enabled_by_default: &[ProfileKind],
        default_cpu_seconds: u32,
    ) -> Vec<ResolvedProfile> {
        let mut out = Vec::new();
        for kind in ProfileKind::ALL {
            let (enabled, path, delta) = self.settings(kind);
            if !enabled.unwrap_or_else(|| enabled_by_default.contains(&kind)) {
                continue;
            }
            let seconds = (kind == ProfileKind::Cpu).then(|| {
                self.cpu
                    .as_ref()
                    .and_then(|c| c.seconds)
                    .unwrap_or(default_cpu_seconds.max(1))
            });
            out.push(ResolvedProfile {
                name: kind.metric_name().to_owned(),
                kind: Some(kind),
                path: path.unwrap_or(kind.default_path()).to_owned(),
                delta: kind.cumulative() && delta.unwrap_or(true),
                seconds,
                pre_delta: false,
            });
        }
        for custom in &self.custom {
            if custom.enabled == Some(false) {
                continue;
            }
            out.push(ResolvedProfile::custom(
                &custom.name,
                Some(&custom.path),
                custom.delta,
                custom.seconds,
                default_cpu_seconds,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_alloy() {
        let resolved = Profiles::default().resolve(&ProfileKind::ALL, 15);
        let names: Vec<_> = resolved
            .iter()
            .map(|p| (p.name.as_str(), p.path.as_str(), p.delta, p.seconds))
            .collect();
        assert_eq!(
            names,
            vec![
                ("process_cpu", "/debug/pprof/profile", false, Some(15)),
                ("memory", "/debug/pprof/allocs", true, None),
                ("goroutine", "/debug/pprof/goroutine", false, None),
                ("mutex", "/debug/pprof/mutex", true, None),
                ("block", "/debug/pprof/block", true, None),
            ]
        );
    }

    #[test]
    fn explicit_settings_beat_defaults() {
        let profiles = Profiles {
            cpu: Some(CpuProfile {
                enabled: None,
                path: None,
                seconds: Some(10),
            }),
            memory: Some(ProfileSettings {
                enabled: Some(false),
                ..Default::default()
            }),
            mutex: Some(ProfileSettings {
                enabled: Some(true),
                path: Some("/m".into()),
                delta: Some(false),
            }),
            goroutine: Some(ProfileSettings {
                delta: Some(true),
                ..Default::default()
            }),
            custom: vec![CustomProfile {
                name: "godeltaprof_memory".into(),
                path: "/debug/pprof/delta_heap".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let resolved = profiles.resolve(
            &[
                ProfileKind::Cpu,
                ProfileKind::Memory,
                ProfileKind::Goroutine,
            ],
            15,
        );
        let names: Vec<_> = resolved
            .iter()
            .map(|p| (p.name.as_str(), p.path.as_str(), p.delta, p.seconds))
            .collect();
        assert_eq!(
            names,
            vec![
                ("process_cpu", "/debug/pprof/profile", false, Some(10)),
                // delta is meaningless for goroutines, which are not cumulative
                ("goroutine", "/debug/pprof/goroutine", false, None),
                ("mutex", "/m", false, None),
                ("memory", "/debug/pprof/delta_heap", false, None),
            ]
        );
        assert!(resolved[3].sends_deltas(), "godeltaprof is already a delta");
        assert!(
            !resolved[2].sends_deltas(),
            "delta switched off: cumulative"
        );
    }

    #[test]
    fn known_endpoints_follow_alloy() {
        let of = |name: &str| ResolvedProfile::custom(name, None, false, None, 15);
        let got: Vec<_> = [
            "fgprof",
            "godeltaprof_memory",
            "godeltaprof_mutex",
            "godeltaprof_block",
            "wall",
        ]
        .into_iter()
        .map(of)
        .map(|p| {
            (
                p.name.clone(),
                p.path.clone(),
                p.delta,
                p.seconds,
                p.sends_deltas(),
            )
        })
        .collect();
        let want = [
            ("fgprof", "/debug/fgprof", false, Some(15), false),
            ("memory", "/debug/pprof/delta_heap", false, None, true),
            ("mutex", "/debug/pprof/delta_mutex", false, None, true),
            ("block", "/debug/pprof/delta_block", false, None, true),
            ("wall", "/debug/pprof/wall", false, None, false),
        ]
        .map(|(n, p, d, s, sd)| (n.to_owned(), p.to_owned(), d, s, sd));
        assert_eq!(got, want);
        // A godeltaprof endpoint is never delta'd again, whatever the spec says.
        assert!(!ResolvedProfile::custom("godeltaprof_mutex", None, true, None, 15).delta);
    }
}
