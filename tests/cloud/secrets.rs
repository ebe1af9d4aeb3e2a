//! Secrets never leak: with every log level on (ours and the HTTP stack's), a run through the
//! clients and simulators that handles API tokens, a tunnel secret, a tunnel token and a wrong
//! token leaves none of them in the logs, in error messages or in `Debug` output.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crabglamp_operator::cloud::cloudflare::{IngressRule, TunnelSecret};
use crabglamp_operator::cloud::hetzner::ServerSpec;

use crabglamp_testkit::cloud::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

// A current-thread runtime: the simulators' tasks run on this thread, so the thread-local
// subscriber sees their events too.
#[tokio::test(flavor = "current_thread")]
async fn no_secret_reaches_logs_errors_or_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut leaked_into = Vec::new();
    // The simulators' own configurations hold the tokens too (the sandbox prints them).
    leaked_into.push(format!("{:?} {:?}", hz_config(), cf_config()));
    let hz = hetzner_sim(hz_config()).await;
    let cf = cloudflare_sim(cf_config()).await;
    let hetzner = hetzner_client(&hz, fast_retry(2));
    let cloudflare = cloudflare_client(&cf, CF_TOKEN, fast_retry(2));

    let secret = TunnelSecret::generate();
    let secret_b64 = secret.to_base64().expose().to_owned();
    let (tunnel, _) = cloudflare.create_tunnel("agent-secret-check", &secret).await.expect("create tunnel");
    let rules =
        [IngressRule { hostname: Some("bot.example.com".into()), service: "http://localhost:8080".into(), path: None }];
    cloudflare.put_tunnel_config(&tunnel.id, &rules).await.expect("config");
    let token = cloudflare.tunnel_token(&tunnel.id).await.expect("token");
    let token_text = token.expose().to_owned();
    leaked_into.push(format!("{token:?} {token} {secret:?}"));

    let spec = ServerSpec {
        name: "agent-secret-check".into(),
        server_type: "cpx22".into(),
        image: "ubuntu-24.04".into(),
        location: "hil".into(),
        labels: [("crabglamp.com/uid".to_owned(), "u1".to_owned())].into(),
        // cloud-init carries the tunnel token to the server: it must not be logged either.
        user_data: Some(format!("#cloud-config\nruncmd:\n  - cloudflared service install {token_text}\n").into()),
        ssh_keys: vec![],
        firewalls: vec![],
        start_after_create: true,
    };
    hetzner.create_server(&spec).await.expect("create server");
    leaked_into.push(format!("{spec:?}"));

    let wrong = "wrong-token-that-must-not-echo";
    let bad_hetzner = hetzner_client_with(
        &hz,
        wrong,
        fast_retry(1),
        Arc::new(crabglamp_operator::cloud::RateLimiter::hetzner_default()),
    );
    let err = bad_hetzner.get_server(1).await.expect_err("401");
    leaked_into.push(format!("{err} {err:?}"));
    let bad_cloudflare = cloudflare_client(&cf, wrong, fast_retry(1));
    let err = bad_cloudflare.get_tunnel(&tunnel.id).await.expect_err("401");
    leaked_into.push(format!("{err} {err:?}"));

    hz.shutdown().await.expect("stop");
    cf.shutdown().await.expect("stop");
    let logs = captured.text();
    assert!(logs.lines().count() > 5, "the capture works: {logs}");
    leaked_into.push(logs);
    for text in &leaked_into {
        for (what, value) in [
            ("the Hetzner token", HZ_TOKEN),
            ("the Cloudflare token", CF_TOKEN),
            ("a wrong token", wrong),
            ("the tunnel secret", secret_b64.as_str()),
            ("the tunnel token", token_text.as_str()),
        ] {
            assert!(!text.contains(value), "{what} leaked into: {text}");
        }
    }
}
