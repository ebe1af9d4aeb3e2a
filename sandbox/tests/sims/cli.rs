//! The standalone `sim` subcommand: prints its base URL once ready and serves the real paths.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

async fn first_line(args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crabglamp-sandbox"))
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("base URL printed within 20 s")
        .expect("read stdout")
        .expect("a line");
    (child, line)
}

#[tokio::test]
async fn sim_subcommands_print_base_url_and_serve() {
    let (mut hz, url) = first_line(&["sim", "hetzner", "--listen", "127.0.0.1:0", "--token", "t0k"]).await;
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"), "{url}");
    let http = reqwest::Client::new();
    let r = http.get(format!("{url}/locations")).bearer_auth("t0k").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("ratelimit-remaining"));
    let r = http.get(format!("{url}/locations")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    hz.kill().await.unwrap();

    let (mut cf, url) = first_line(&[
        "sim",
        "cloudflare",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "t0k",
        "--account-id",
        "acc",
        "--zone-id",
        "zone",
        "--zone-name",
        "example.com",
    ])
    .await;
    assert!(url.ends_with("/client/v4"), "{url}");
    let r = http.get(format!("{url}/accounts/acc/cfd_tunnel")).bearer_auth("t0k").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = http.get(format!("{url}/accounts/acc/cfd_tunnel")).send().await.unwrap();
    assert_eq!(r.status(), 400, "no auth header: 400 (code 9106)");
    cf.kill().await.unwrap();
}
