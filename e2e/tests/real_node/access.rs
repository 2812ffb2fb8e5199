//! What the scraper's own ServiceAccount token may do against the real API server: one node's
//! scraper must not read a Secret that no target or sink references, nor write any node's job
//! shard or another node's health report (issue 16: a compromised node must not hold the
//! cluster's credentials, nor rewrite what every node scrapes).

use anyhow::{Context, bail, ensure};
use kubeprof_e2e::real_node::NODE_NAME;

use crate::stage::Stage;

/// A kubeconfig with nothing but the scraper ServiceAccount's token (the token Secret
/// Kubernetes 1.20 creates for every ServiceAccount) and the cluster's address and CA.
pub struct ScraperToken {
    file: tempfile::NamedTempFile,
}

impl ScraperToken {
    /// The token of `<release>-scraper`.
    pub fn get(s: &Stage<'_>) -> anyhow::Result<Self> {
        let sa = format!("{}-scraper", s.helm.name);
        let secret = s.node.kubectl(&[
            "get",
            "serviceaccount",
            "-n",
            s.ns(),
            &sa,
            "-o",
            "jsonpath={.secrets[0].name}",
        ])?;
        ensure!(!secret.trim().is_empty(), "{sa} has no token Secret");
        let token = s.node.kubectl(&[
            "get",
            "secret",
            "-n",
            s.ns(),
            secret.trim(),
            "-o",
            "go-template={{.data.token | base64decode}}",
        ])?;
        let admin: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(s.node.kubeconfig_path())?)?;
        let cluster = &admin["clusters"][0]["cluster"];
        let server = cluster["server"].as_str().context("no server")?;
        let ca = cluster["certificate-authority"]
            .as_str()
            .context("no certificate-authority")?;
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "node", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": sa, "user": {"token": token.trim()}}],
            "contexts": [{"name": "node", "context": {"cluster": "node", "user": sa}}],
            "current-context": "node",
        });
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), config.to_string())?;
        Ok(Self { file })
    }

    /// `kubectl ARGS` as the scraper: Ok(stdout), or Err(stderr).
    fn kubectl(&self, args: &[&str]) -> anyhow::Result<Result<String, String>> {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.file.path())
            .args(args)
            .output()
            .context("running kubectl")?;
        Ok(if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        })
    }

    /// `kubectl ARGS` as the scraper must be refused by authorization (403).
    fn forbidden(&self, args: &[&str]) -> anyhow::Result<()> {
        match self.kubectl(args)? {
            Err(e) if e.contains("(Forbidden)") => Ok(()),
            Err(e) => bail!("kubectl {}: expected 403, got: {e}", args.join(" ")),
            Ok(out) => bail!(
                "kubectl {} as the scraper succeeded: {}",
                args.join(" "),
                out.trim()
            ),
        }
    }
}

/// The scraper's token reads the Secret a sink references, and gets 403 for a Secret nothing
/// references (in an application namespace and in kube-system), for every job shard (its own
/// node's too: shards are the operator's) and for another node's health report. Returns what
/// was refused, one line each.
pub fn scraper_is_confined(s: &Stage<'_>, referenced: (&str, &str)) -> anyhow::Result<Vec<String>> {
    let token = ScraperToken::get(s)?;
    // The positive case first, so a 403 below is about the object, not a broken token.
    let (ns, name) = referenced;
    token
        .kubectl(&["get", "secret", "-n", ns, name, "-o", "name"])?
        .map_err(|e| {
            anyhow::anyhow!("the scraper cannot read the Secret {ns}/{name} a sink references: {e}")
        })?;
    s.node.kubectl(&[
        "create",
        "secret",
        "generic",
        "unreferenced",
        "-n",
        &s.app_ns,
        "--from-literal=password=not-for-kubeprof",
    ])?;
    let system_secret = s
        .node
        .kubectl(&["get", "secrets", "-n", "kube-system", "-o", "name"])?
        .lines()
        .next()
        .map(|l| l.trim_start_matches("secret/").to_owned())
        .context("no Secret in kube-system")?;
    let patch = r#"{"data":{"e2e":"written by a scraper"}}"#;
    let other_shard = format!(
        "{}.another-node",
        kubeprof_crds::constants::JOBS_OBJECT_PREFIX
    );
    let own_shard = format!(
        "{}.{NODE_NAME}",
        kubeprof_crds::constants::JOBS_OBJECT_PREFIX
    );
    let other_health = format!(
        "{}.another-node",
        kubeprof_crds::constants::HEALTH_OBJECT_PREFIX
    );
    let checks: Vec<Vec<&str>> = vec![
        vec!["get", "secret", "-n", &s.app_ns, "unreferenced"],
        vec!["get", "secret", "-n", "kube-system", &system_secret],
        vec![
            "patch",
            "configmap",
            "-n",
            s.ns(),
            &other_shard,
            "--type=merge",
            "-p",
            patch,
        ],
        vec![
            "patch",
            "configmap",
            "-n",
            s.ns(),
            &own_shard,
            "--type=merge",
            "-p",
            patch,
        ],
        vec![
            "patch",
            "configmap",
            "-n",
            s.ns(),
            &other_health,
            "--type=merge",
            "-p",
            patch,
        ],
    ];
    let mut refused = Vec::new();
    for args in checks {
        token.forbidden(&args)?;
        refused.push(format!("403 kubectl {}", args[..5].join(" ")));
    }
    Ok(refused)
}
