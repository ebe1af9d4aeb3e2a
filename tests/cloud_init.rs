//! The Agent user data judged by the real validator: Debian's `cloud-init schema`, the same
//! schema a server's cloud-init applies. `scripts/test` installs cloud-init (ensure_cloud_init
//! in scripts/lib/services.sh); without it these tests fail rather than pass unchecked.

use crabglamp_operator::cloud::Secret;
use crabglamp_operator::cloud::cloudflare::{TunnelSecret, derive_tunnel_token};
use crabglamp_operator::controllers::cloud_init::{
    CLOUDFLARED_UNIT_PATH, CloudInitError, INSTALL_SCRIPT_PATH, METADATA_RESTRICTION, TUNNEL_ENV_PATH, USER_DATA_LIMIT,
    agent_user_data,
};
use serde_json::Value;

fn token() -> Secret {
    let secret = TunnelSecret::from_bytes((0u8..32).collect()).expect("32 bytes");
    derive_tunnel_token("5ab4e9dfbd435d24068829fda0077963", "c1744f8b-faa1-48a4-9e5c-02ac921467fa", &secret)
}

// The validator is the test kit's (testkit/): tests/agents.rs validates with it too.
use crabglamp_testkit::cloud_init_schema;

/// The network namespaces only these tests use.
mod cloud_init {
    pub mod netns;
}
use cloud_init::netns;

fn assert_valid(name: &str, doc: &Secret) {
    cloud_init_schema::assert_valid(name, doc.expose());
}

fn parse(doc: &Secret) -> Value {
    serde_norway::from_str(doc.expose()).expect("user data parses as YAML")
}

fn file_content(parsed: &Value, path: &str) -> (String, String) {
    let files = parsed["write_files"].as_array().expect("write_files");
    let f = files.iter().find(|f| f["path"] == path).unwrap_or_else(|| panic!("{path} is written"));
    (f["content"].as_str().expect("content").to_owned(), f["permissions"].as_str().expect("permissions").to_owned())
}

/// The server starts cloudflared with this token: root-only env file, a unit that reads it and
/// passes no token on the command line, and a first-boot script that installs and enables it.
fn assert_starts_cloudflared(doc: &Secret, token: &Secret) {
    assert_eq!(doc.expose().matches(token.expose()).count(), 1, "the token appears exactly once");
    let parsed = parse(doc);
    let (env, mode) = file_content(&parsed, TUNNEL_ENV_PATH);
    assert_eq!(env, format!("TUNNEL_TOKEN={}\n", token.expose()));
    assert_eq!(mode, "0600");
    let (unit, _) = file_content(&parsed, CLOUDFLARED_UNIT_PATH);
    let lines: Vec<&str> = unit.lines().collect();
    assert!(lines.contains(&"EnvironmentFile=/etc/cloudflared/tunnel.env"), "{unit}");
    assert!(lines.contains(&"ExecStart=/usr/bin/cloudflared --no-autoupdate tunnel run"), "{unit}");
    assert!(lines.contains(&"WantedBy=multi-user.target"), "{unit}");
    assert!(!unit.contains("--token"), "no token on a command line");
    let (script, mode) = file_content(&parsed, INSTALL_SCRIPT_PATH);
    assert_eq!(mode, "0755");
    assert!(script.contains("apt_get install -y --no-install-recommends cloudflared"));
    assert!(script.contains("systemctl enable --now --no-block cloudflared.service"));
    // The real shell checks the script's syntax (it only parses with -n, never runs).
    let dir = tempfile::tempdir().expect("temp dir");
    let script_path = dir.path().join("install-cloudflared");
    std::fs::write(&script_path, &script).expect("write script");
    let sh = std::process::Command::new("sh").arg("-n").arg(&script_path).output().expect("run sh -n");
    assert!(sh.status.success(), "install script syntax: {}", String::from_utf8_lossy(&sh.stderr));
    let runcmd = parsed["runcmd"].as_array().expect("runcmd");
    assert_eq!(runcmd.last(), Some(&serde_json::json!([INSTALL_SCRIPT_PATH])), "runcmd runs the script last");
}

#[test]
fn no_keys() {
    let doc = agent_user_data(&[], &token()).expect("render");
    assert_valid("no-keys", &doc);
    assert_starts_cloudflared(&doc, &token());
    assert!(parse(&doc).get("ssh_authorized_keys").is_none(), "an empty list is schema-invalid");
}

#[test]
fn several_keys_with_yaml_syntax_in_comments() {
    let keys = vec![
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJp2mR0nq6d1oP4W1wz7jv6S3bJb5V4tq1k3T8F2nQ1m ops@example.com".to_owned(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc ops: \"laptop\" #1 - [x] {y: z} &a *b !c |d >e %f @g `h' ".to_owned(),
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= josé 🦀 C:\\keys\\id".to_owned(),
        "from=\"10.0.0.0/8\",no-agent-forwarding ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 restricted: yes".to_owned(),
    ];
    let doc = agent_user_data(&keys, &token()).expect("render");
    assert_valid("several-keys", &doc);
    assert_starts_cloudflared(&doc, &token());
    let trimmed: Vec<&str> = keys.iter().map(|k| k.trim()).collect();
    assert_eq!(parse(&doc)["ssh_authorized_keys"], serde_json::json!(trimmed), "each key is one string, unchanged");
}

#[test]
fn keys_up_to_the_size_limit() {
    // Realistic RSA-4096-sized keys until the next one would not fit, then one key padded so
    // the document is exactly Hetzner's limit.
    let key = |i: usize, pad: usize| format!("ssh-rsa AAAAB3NzaC1yc2E{} key-{i}{}", "A".repeat(700), "x".repeat(pad));
    let mut keys: Vec<String> = Vec::new();
    while agent_user_data(&[keys.clone(), vec![key(keys.len(), 0)]].concat(), &token()).is_ok() {
        keys.push(key(keys.len(), 0));
    }
    assert!(keys.len() >= 30, "room for {} keys only", keys.len());
    let size = agent_user_data(&keys, &token()).expect("render").expose().len();
    let last = keys.len() - 1;
    keys[last] = key(last, USER_DATA_LIMIT - size);
    let doc = agent_user_data(&keys, &token()).expect("exactly at the limit");
    assert_eq!(doc.expose().len(), USER_DATA_LIMIT);
    assert_valid("max-size", &doc);
    assert_starts_cloudflared(&doc, &token());

    keys[last].push('x');
    let err = agent_user_data(&keys, &token()).expect_err("one byte over");
    assert_eq!(err, CloudInitError::TooLarge { size: USER_DATA_LIMIT + 1, limit: USER_DATA_LIMIT });
    let twenty_big = vec![format!("ssh-rsa {}", "A".repeat(16 * 1024)); 20];
    assert!(matches!(agent_user_data(&twenty_big, &token()), Err(CloudInitError::TooLarge { .. })));
}

#[test]
fn the_validator_refuses_a_broken_document() {
    // The judge is not a rubber stamp: a wrong type is an error (exit 1).
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 600\n").expect("write");
    let out = std::process::Command::new(cloud_init_schema::cloud_init())
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The first boot command, as the rendered document carries it.
fn first_boot_command(doc: &Secret) -> Vec<String> {
    let parsed = parse(doc);
    let first = parsed["bootcmd"].as_array().and_then(|c| c.first()).expect("a boot command");
    serde_json::from_value(first.clone()).expect("the boot command is a list of strings")
}

#[test]
fn the_metadata_service_is_closed_to_all_but_root_by_the_first_boot_command() {
    for keys in [
        vec![],
        vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJp2mR0nq6d1oP4W1wz7jv6S3bJb5V4tq1k3T8F2nQ1m ops".to_owned()],
    ] {
        let doc = agent_user_data(&keys, &token()).expect("render");
        assert_valid("metadata-restriction", &doc);
        assert_eq!(first_boot_command(&doc), ["sh", "-c", METADATA_RESTRICTION], "the restriction runs first");
        assert!(!METADATA_RESTRICTION.contains(token().expose()), "the restriction carries no secret");
    }
}

/// The boot command, run for real in a miniature server network (network namespaces of this
/// machine) with each firewall tool the images have: root on the server reads the user data
/// (and with it the token), an unprivileged process and a container behind the server are
/// refused; with no firewall tool at all nobody reads it and the command fails.
#[test]
fn the_restriction_refuses_non_root_and_containers_and_allows_root() {
    netns::require_tools();
    let doc = agent_user_data(&[], &token()).expect("render");
    let argv = first_boot_command(&doc);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // PATH holding only the named tools (and sh), as on an image that lacks the others.
    let only = |dir: &std::path::Path, tools: &[&str]| {
        std::fs::create_dir_all(dir).expect("bin dir");
        for tool in tools.iter().chain(&["sh"]) {
            let target = netns::which(tool).unwrap_or_else(|| panic!("{tool} is installed"));
            std::os::unix::fs::symlink(target, dir.join(tool)).expect("symlink");
        }
        dir.to_path_buf()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("nftables (Debian)", None),
        ("iptables (Ubuntu)", Some(only(&dir.path().join("iptables-only"), &["iptables", "ip"]))),
    ];
    for (i, (image, path)) in cases.iter().enumerate() {
        let net = netns::ServerNet::start(doc.expose(), &dir.path().join(format!("docroot-{i}")));
        assert!(net.ask(netns::Asker::Nobody).is_ok(), "{image}: open to everyone before the boot command");
        assert!(net.ask(netns::Asker::Container).is_ok(), "{image}: open to containers before the boot command");
        // Twice: bootcmd runs on every boot, and `cloud-init single` may run it again.
        for run in 0..2 {
            let (ok, stderr) = net.run_on_server(&argv, path.as_deref());
            assert!(ok, "{image}: the boot command failed (run {run}): {stderr}");
        }
        assert_eq!(net.ask(netns::Asker::Root).as_deref(), Ok(doc.expose()), "{image}: root reads the user data");
        let nobody = net.ask(netns::Asker::Nobody);
        assert!(nobody.is_err(), "{image}: an unprivileged process read the user data");
        let container = net.ask(netns::Asker::Container);
        assert!(container.is_err(), "{image}: a container read the user data");
    }
    // Neither tool: closed to root too, and the command reports the failure.
    let net = netns::ServerNet::start(doc.expose(), &dir.path().join("docroot-none"));
    let (ok, stderr) = net.run_on_server(&argv, Some(&only(&dir.path().join("no-firewall"), &["ip"])));
    assert!(!ok && stderr.contains("neither nft nor iptables"), "no firewall tool must fail loudly: {stderr}");
    assert!(net.ask(netns::Asker::Root).is_err(), "without a firewall nobody reads the user data");
    assert!(net.ask(netns::Asker::Nobody).is_err(), "without a firewall nobody reads the user data");
}
