//! Scraping HTTPS targets: a custom CA, a client certificate the target demands (mutual TLS),
//! `serverName` for a certificate that does not name the address, and `insecureSkipVerify`.
//! Certificates are made with `openssl`; the target is a rustls server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use kubeprof_crds::{
    Duration as ApiDuration, ProfileKind, ResolvedProfile, Scheme,
    job::{CredentialRef, JobOrigin, OriginKind, ScrapeJob, ScrapeTls},
};
use kubeprof_scraper::{FetchError, Fetcher, SecretsDir};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `profiles.internal` only (no IP), and a client certificate.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=kubeprof test CA",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:profiles.internal\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [
        ("server", "profiles.internal"),
        ("client", "kubeprof-scraper"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

/// An HTTPS server that demands a client certificate signed by the CA and answers every
/// request with the CPU profile fixture.
async fn https_target(dir: &Path) -> String {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let body = common::fixture("cpu.pb.gz");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                // A refused handshake is the client's problem, reported on its side.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn job(address: &str, tls: ScrapeTls) -> ScrapeJob {
    let origin = JobOrigin {
        kind: OriginKind::Static,
        namespace: String::new(),
        name: "tls".into(),
    };
    ScrapeJob {
        id: ScrapeJob::identity(&origin, address, "goroutine", "/debug/pprof/goroutine"),
        origin,
        address: address.into(),
        scheme: Scheme::Https,
        profile: ResolvedProfile {
            name: "goroutine".into(),
            kind: Some(ProfileKind::Goroutine),
            path: "/debug/pprof/goroutine".into(),
            delta: false,
            seconds: None,
            pre_delta: false,
        },
        params: Default::default(),
        interval: ApiDuration::from_secs(15),
        timeout: ApiDuration::from_secs(5),
        labels: Default::default(),
        relabelings: Vec::new(),
        external_labels: Default::default(),
        auth: None,
        tls: Some(tls),
        sinks: Vec::new(),
        max_profile_bytes: None,
    }
}

fn file(dir: &Path, name: &str) -> Option<CredentialRef> {
    Some(CredentialRef::from_file(dir.join(name).to_string_lossy()))
}

#[tokio::test]
async fn https_targets_with_ca_client_certificate_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d);
    let addr = https_target(d).await;
    let fetcher = Fetcher::new(Arc::new(SecretsDir(None)));
    let expected = common::fixture("cpu.pb.gz");
    let mtls = ScrapeTls {
        ca: file(d, "ca.crt"),
        cert: file(d, "client.crt"),
        key: file(d, "client.key"),
        server_name: Some("profiles.internal".into()),
        insecure_skip_verify: false,
    };
    let limit = 16 << 20;

    // Everything right: the CA verifies the target under its name, the target accepts our cert.
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        fetcher.fetch(&job(&addr, mtls.clone()), limit),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(body.as_ref(), expected.as_slice());

    // The certificate names profiles.internal, not 127.0.0.1: without serverName it fails, as TLS.
    let no_name = ScrapeTls {
        server_name: None,
        ..mtls.clone()
    };
    let e = fetcher
        .fetch(&job(&addr, no_name), limit)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Tls(_)), "{e:?}");
    assert_eq!(e.reason().as_str(), "tls");

    // Without our CA the system roots do not know the target's issuer.
    let no_ca = ScrapeTls {
        ca: None,
        ..mtls.clone()
    };
    let e = fetcher.fetch(&job(&addr, no_ca), limit).await.unwrap_err();
    assert_eq!(e.reason().as_str(), "tls", "{e:?}");

    // Without a client certificate the target refuses us.
    let no_cert = ScrapeTls {
        cert: None,
        key: None,
        ..mtls.clone()
    };
    let e = fetcher
        .fetch(&job(&addr, no_cert), limit)
        .await
        .unwrap_err();
    assert!(
        matches!(e.reason().as_str(), "tls" | "connect" | "request"),
        "{e:?}"
    );

    // insecureSkipVerify: no CA, no name, still encrypted, still our certificate.
    let skip = ScrapeTls {
        ca: None,
        server_name: None,
        insecure_skip_verify: true,
        ..mtls.clone()
    };
    let body = fetcher.fetch(&job(&addr, skip), limit).await.unwrap();
    assert_eq!(body.as_ref(), expected.as_slice());
}
