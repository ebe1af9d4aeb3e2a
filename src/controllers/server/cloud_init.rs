//! The `#cloud-config` user data of an Agent server: the metadata service closed to all but root
//! from the first boot on, root reachable by the Agent's SSH keys only (no password anywhere),
//! and `cloudflared` installed from Cloudflare's apt repository and run as a systemd service
//! with the tunnel token. The only code that puts a tunnel token into user data. The document
//! is a [`Secret`]: it must never be logged, printed, stored or put in an error, status or
//! event.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use crate::cloud::Secret;
use crate::cloud::hetzner::ssh_keys_cloud_config;

/// Hetzner refuses `user_data` above 32 KiB (`invalid_input`); rendering checks it first so an
/// Agent with too many or too long keys fails with a reason, not with a rejected server create.
pub const USER_DATA_LIMIT: usize = 32 * 1024;

/// Where the token lives on the server: root-only (0600), read by systemd (PID 1) when it
/// starts the unit, so the token is on no command line (`ps`, `/proc/*/cmdline`).
pub const TUNNEL_ENV_PATH: &str = "/etc/cloudflared/tunnel.env";

/// The name `cloudflared service install` gives its own unit, so operators find it where they
/// expect it; the package from pkg.cloudflare.com ships no unit of its own.
pub const CLOUDFLARED_UNIT_PATH: &str = "/etc/systemd/system/cloudflared.service";

/// The script `runcmd` runs once on first boot.
pub const INSTALL_SCRIPT_PATH: &str = "/usr/local/sbin/crabglamp-install-cloudflared";

/// Hetzner's metadata service: it serves the server's user data, tunnel token included
/// (`/hetzner/v1/userdata`), to any process on the server that asks, for the server's life.
pub const METADATA_ADDRESS: &str = "169.254.169.254";

/// The first boot command of an Agent's server: from then on only root reaches the metadata
/// service. bootcmd runs on every boot, as root, in cloud-init's network stage: after the
/// datasource has fetched the user data and before write_files, users, sshd, runcmd or any
/// service of the image starts. nftables first (Debian: Priority important, so on every
/// image), iptables second (Ubuntu: ufw's dependency). Both also refuse forwarded traffic,
/// so a container on a bridge (root inside it or not) cannot reach the service either; in
/// iptables that is the raw table, where Docker's FORWARD accepts cannot come first. With
/// neither tool the service is closed to everyone, root too, and the command fails, which
/// cloud-init reports (`cloud-init status`: error).
pub const METADATA_RESTRICTION: &str = r#"md=169.254.169.254
nft_rules() {
  nft -f - <<EOF
table ip crabglamp_metadata
delete table ip crabglamp_metadata
table ip crabglamp_metadata {
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr $md meta skuid != 0 reject with icmp type admin-prohibited
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    ip daddr $md reject with icmp type admin-prohibited
  }
}
EOF
}
iptables_rules() {
  set -- -d $md -m owner ! --uid-owner 0 -j REJECT --reject-with icmp-admin-prohibited
  { iptables -w -C OUTPUT "$@" 2>/dev/null || iptables -w -I OUTPUT 1 "$@"; } &&
    { iptables -w -t raw -C PREROUTING -d $md -j DROP 2>/dev/null || iptables -w -t raw -I PREROUTING 1 -d $md -j DROP; }
}
if command -v nft >/dev/null 2>&1 && nft_rules; then exit 0; fi
if command -v iptables >/dev/null 2>&1 && iptables_rules; then exit 0; fi
ip route replace prohibit $md/32
echo "crabglamp: neither nft nor iptables works here: the metadata service is closed to every user, root too" >&2
exit 1
"#;

/// Why user data could not be rendered. Never carries the token or the document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloudInitError {
    #[error(
        "user data would be {size} bytes, over Hetzner's limit of {limit} bytes: fewer or shorter SSH keys are needed"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("SSH key {index} (counting from 0) {reason}")]
    InvalidSshKey { index: usize, reason: &'static str },
    #[error("the tunnel token is not what cloudflared reads: {reason}")]
    MalformedTunnelToken { reason: &'static str },
}

/// Renders the user data of an Agent server that authorises `ssh_keys` for root and runs the
/// tunnel whose token is `tunnel_token` (as returned by Cloudflare's `GET .../token` or
/// [`derive_tunnel_token`](crate::cloud::cloudflare::derive_tunnel_token)). Deterministic: the
/// same input gives the same bytes, so a retried create sends the identical document.
///
/// Root, not a separate user: the server is dedicated to one Agent, its key holders administer
/// it, and a sudo user would be root-equivalent while adding a second account to keep locked;
/// Hetzner's own images and rescue system also expect root.
pub fn agent_user_data(ssh_keys: &[String], tunnel_token: &Secret) -> Result<Secret, CloudInitError> {
    let mut doc = root_keys_document(ssh_keys)?;
    check_tunnel_token(tunnel_token.expose())?;
    // The only boot command, so it is also the first: nothing else on the server runs before
    // the metadata service (and the token in it) is closed to everyone but root.
    doc.push_str("bootcmd:\n");
    doc.push_str(&format!("  - [\"sh\", \"-c\", {}]\n", quoted(METADATA_RESTRICTION)));
    doc.push_str("write_files:\n");
    push_file(&mut doc, TUNNEL_ENV_PATH, "0600", &format!("TUNNEL_TOKEN={}\n", tunnel_token.expose()));
    push_file(&mut doc, CLOUDFLARED_UNIT_PATH, "0644", CLOUDFLARED_UNIT);
    push_file(&mut doc, INSTALL_SCRIPT_PATH, "0755", INSTALL_SCRIPT);
    // Locked again at the end: Hetzner generates a root password for a server created without
    // `ssh_keys` objects (ours get their keys here) and returns it in the create response, and
    // a chpasswd from vendor data would run in cc_set_passwords, after cc_users_groups. runcmd
    // runs in cloud-final, after every module that sets passwords, so the keys stay the only
    // login, on the web console too. `passwd -l` is what cloud-init's lock_passwd runs.
    doc.push_str("runcmd:\n");
    doc.push_str("  - [\"passwd\", \"-l\", \"root\"]\n");
    doc.push_str(&format!("  - [{}]\n", quoted(INSTALL_SCRIPT_PATH)));
    within_limit(doc)
}

/// The user data of a PlainVM's server: root logs in with `ssh_keys` only, nothing else is
/// installed (the customer's own VM). Not a secret by content, sent as one for uniformity.
pub fn plainvm_user_data(ssh_keys: &[String]) -> Result<Secret, CloudInitError> {
    let mut doc = root_keys_document(ssh_keys)?;
    // See `agent_user_data` for why the password is locked again at the very end.
    doc.push_str("runcmd:\n");
    doc.push_str("  - [\"passwd\", \"-l\", \"root\"]\n");
    within_limit(doc)
}

/// The start every document shares: `ssh_keys` (checked) for root, no password login.
fn root_keys_document(ssh_keys: &[String]) -> Result<String, CloudInitError> {
    for (index, key) in ssh_keys.iter().enumerate() {
        check_ssh_key(index, key)?;
    }
    // One function renders keys. cloud-init's schema wants at least one item in
    // `ssh_authorized_keys` (minItems 1), so no keys means no key at all.
    let mut doc = if ssh_keys.is_empty() { String::from("#cloud-config\n") } else { ssh_keys_cloud_config(ssh_keys) };
    // cc_ssh writes the keys to root without a prefix only when disable_root is false (with it
    // true, the default on Ubuntu and Debian images, root's keys get a `command="echo Please
    // login as..."` prefix). A `users` list without `default` replaces the image's, so no
    // distro user (ubuntu, debian) is created to receive the keys as well; cc_users_groups
    // skips creating the existing root but still applies lock_passwd to it.
    doc.push_str("disable_root: false\nusers:\n  - name: \"root\"\n    lock_passwd: true\n");
    // cc_set_passwords: PasswordAuthentication no in sshd's configuration.
    doc.push_str("ssh_pwauth: false\n");
    Ok(doc)
}

fn within_limit(doc: String) -> Result<Secret, CloudInitError> {
    if doc.len() > USER_DATA_LIMIT {
        return Err(CloudInitError::TooLarge { size: doc.len(), limit: USER_DATA_LIMIT });
    }
    Ok(Secret::new(doc))
}

/// A YAML double-quoted scalar: JSON string syntax is a subset of it, so no comment, colon,
/// quote or `#` in a value can end the scalar. The characters that JSON leaves literal but YAML
/// reads as line breaks or refuses are rejected before rendering (see [`check_ssh_key`]).
fn quoted(value: &str) -> String {
    Value::String(value.to_owned()).to_string()
}

fn push_file(doc: &mut String, path: &str, permissions: &str, content: &str) {
    // cc_write_files takes permissions as an octal string; a YAML integer 0600 would be read
    // as 384 by YAML 1.1 and as 600 by YAML 1.2.
    doc.push_str(&format!("  - path: {}\n", quoted(path)));
    doc.push_str("    owner: \"root:root\"\n");
    doc.push_str(&format!("    permissions: {}\n", quoted(permissions)));
    doc.push_str(&format!("    content: {}\n", quoted(content)));
}

/// A key is one authorized_keys line: a line break in it would let one "key" add a second line
/// with options of its own. NEL, LS and PS are line breaks to YAML (PyYAML, libyaml) even
/// inside a quoted scalar, and U+FFFE/U+FFFF are not allowed in a YAML stream at all.
fn check_ssh_key(index: usize, key: &str) -> Result<(), CloudInitError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(CloudInitError::InvalidSshKey { index, reason: "is empty" });
    }
    let breaks_yaml =
        |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}');
    if key.chars().any(breaks_yaml) {
        return Err(CloudInitError::InvalidSshKey {
            index,
            reason: "contains a line break or another control character",
        });
    }
    Ok(())
}

/// What `cloudflared tunnel run` parses from TUNNEL_TOKEN: standard base64 of a JSON object
/// with the account tag `a`, tunnel id `t` and secret `s`. Checking it here also keeps the
/// environment file one line: base64 has no newline, quote or `$` for systemd to interpret.
fn check_tunnel_token(token: &str) -> Result<(), CloudInitError> {
    let malformed = |reason| CloudInitError::MalformedTunnelToken { reason };
    let bytes = B64.decode(token).map_err(|_| malformed("not standard base64"))?;
    let inner: Value = serde_json::from_slice(&bytes).map_err(|_| malformed("not base64 of JSON"))?;
    if ["a", "t", "s"].iter().all(|k| inner.get(k).is_some_and(Value::is_string)) {
        Ok(())
    } else {
        Err(malformed("lacks the string fields a, t and s"))
    }
}

/// cloudflared's own `service install` unit (cmd/cloudflared/linux_service.go), with the token
/// taken from the environment file instead of `--token` on the command line.
const CLOUDFLARED_UNIT: &str = "\
[Unit]
Description=cloudflared (the Cloudflare Tunnel of this crabglamp Agent)
After=network-online.target
Wants=network-online.target

[Service]
# cloudflared reports ready (sd_notify) once connected to Cloudflare's edge.
TimeoutStartSec=15
Type=notify
# `tunnel run` takes its token flag from TUNNEL_TOKEN when the flag is absent.
EnvironmentFile=/etc/cloudflared/tunnel.env
# Updates come from the apt repository; cloudflared must not replace a packaged binary.
ExecStart=/usr/bin/cloudflared --no-autoupdate tunnel run
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=multi-user.target
";

/// Cloudflare's apt instructions for cloudflared (pkg.cloudflare.com): the keyring in
/// /usr/share/keyrings, a source signed by it, the `any` suite (one build for every Debian and
/// Ubuntu release, amd64 and arm64 alike).
const INSTALL_SCRIPT: &str = "\
#!/bin/sh
# Written by crabglamp-operator's cloud-init and run once by runcmd: installs cloudflared from
# Cloudflare's apt repository and starts the tunnel, the only way into this server.
set -eu
export DEBIAN_FRONTEND=noninteractive
# On first boot unattended-upgrades may hold the dpkg lock: wait for it instead of failing.
apt_get() { apt-get -q -o DPkg::Lock::Timeout=600 -o Acquire::Retries=5 \"$@\"; }
if ! command -v curl >/dev/null 2>&1; then
  apt_get update
  apt_get install -y --no-install-recommends ca-certificates curl
fi
mkdir -p --mode=0755 /usr/share/keyrings
curl -fsSL --retry 5 --retry-connrefused --retry-delay 2 -o /usr/share/keyrings/cloudflare-main.gpg https://pkg.cloudflare.com/cloudflare-main.gpg
# Written only now: a source whose keyring is missing would fail every other apt-get update.
echo 'deb [signed-by=/usr/share/keyrings/cloudflare-main.gpg] https://pkg.cloudflare.com/cloudflared any main' >/etc/apt/sources.list.d/cloudflared.list
apt_get update
apt_get install -y --no-install-recommends cloudflared
systemctl daemon-reload
# --no-block: this runs inside cloud-final.service; waiting here for a unit ordered after
# network-online.target could stall cloud-init while the tunnel connects.
systemctl enable --now --no-block cloudflared.service
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::cloudflare::{TunnelSecret, derive_tunnel_token};

    fn token() -> Secret {
        let secret = TunnelSecret::from_bytes(vec![7u8; 32]).unwrap();
        derive_tunnel_token("account-tag", "8e3c2b8e-0000-4000-8000-000000000001", &secret)
    }

    fn parse(doc: &Secret) -> Value {
        assert!(doc.expose().starts_with("#cloud-config\n"), "cloud-init needs the header on the first line");
        serde_norway::from_str(doc.expose()).unwrap()
    }

    fn file<'a>(parsed: &'a Value, path: &str) -> &'a Value {
        parsed["write_files"].as_array().unwrap().iter().find(|f| f["path"] == path).unwrap()
    }

    #[test]
    fn document_has_the_expected_structure() {
        let keys = vec!["ssh-ed25519 AAAAC3Nza ops@example.com".to_owned(), "ssh-rsa AAAAB3Nza laptop".to_owned()];
        let parsed = parse(&agent_user_data(&keys, &token()).unwrap());
        assert_eq!(parsed["ssh_authorized_keys"], serde_json::json!(keys));
        assert_eq!(parsed["disable_root"], false);
        assert_eq!(parsed["ssh_pwauth"], false);
        assert_eq!(parsed["users"], serde_json::json!([{"name": "root", "lock_passwd": true}]));
        let env = file(&parsed, TUNNEL_ENV_PATH);
        assert_eq!(env["permissions"], "0600");
        assert_eq!(env["owner"], "root:root");
        assert_eq!(env["content"], format!("TUNNEL_TOKEN={}\n", token().expose()));
        let unit = file(&parsed, CLOUDFLARED_UNIT_PATH)["content"].as_str().unwrap();
        assert!(unit.contains("\nEnvironmentFile=/etc/cloudflared/tunnel.env\n"));
        assert!(unit.contains("\nExecStart=/usr/bin/cloudflared --no-autoupdate tunnel run\n"));
        let script = file(&parsed, INSTALL_SCRIPT_PATH);
        assert_eq!(script["permissions"], "0755");
        let script = script["content"].as_str().unwrap();
        assert!(script.contains("https://pkg.cloudflare.com/cloudflare-main.gpg"));
        assert!(script.contains(
            "'deb [signed-by=/usr/share/keyrings/cloudflare-main.gpg] https://pkg.cloudflare.com/cloudflared any main'"
        ));
        assert!(script.contains("systemctl enable --now --no-block cloudflared.service"));
        assert_eq!(parsed["runcmd"], serde_json::json!([["passwd", "-l", "root"], [INSTALL_SCRIPT_PATH]]));
        assert_eq!(parsed["bootcmd"], serde_json::json!([["sh", "-c", METADATA_RESTRICTION]]));
    }

    #[test]
    fn the_restriction_names_the_metadata_service_and_survives_shell_quoting() {
        assert!(METADATA_RESTRICTION.starts_with(&format!("md={METADATA_ADDRESS}\n")));
        // cloud-init writes list items into its bootcmd script in single quotes; none inside
        // means the text reaches `sh -c` unchanged.
        assert!(!METADATA_RESTRICTION.contains('\''));
        // A PlainVM's user data holds no secret: its metadata service is the customer's.
        assert!(plainvm_user_data(&[]).unwrap().expose().find("bootcmd").is_none());
    }

    #[test]
    fn token_appears_exactly_once_and_never_on_a_command_line() {
        let doc = agent_user_data(&[], &token()).unwrap();
        assert_eq!(doc.expose().matches(token().expose()).count(), 1);
        assert!(!doc.expose().contains("--token"));
        assert!(!format!("{doc:?} {doc}").contains(token().expose()), "the document is never printed");
        // The sandbox's cloudflared finds the token as a base64 run starting with eyJ.
        assert!(token().expose().starts_with("eyJ"));
    }

    #[test]
    fn keys_with_yaml_syntax_in_comments_stay_one_string_each() {
        let keys = vec![
            "ssh-ed25519 AAAAC3 ops: \"laptop\" #1 - [x] {y} &z *w !t |b >f %p @u `c'".to_owned(),
            "  ssh-ed25519 AAAAC3 josé 🦀 \\ backslash  \n".to_owned(),
        ];
        let parsed = parse(&agent_user_data(&keys, &token()).unwrap());
        assert_eq!(parsed["ssh_authorized_keys"][0], keys[0]);
        assert_eq!(parsed["ssh_authorized_keys"][1], keys[1].trim(), "surrounding whitespace (a pasted newline) goes");
        assert_eq!(parsed["ssh_authorized_keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn no_keys_still_renders_a_valid_document() {
        let parsed = parse(&agent_user_data(&[], &token()).unwrap());
        // cloud-init's schema refuses an empty list (minItems 1): the key is left out.
        assert!(parsed.get("ssh_authorized_keys").is_none());
    }

    #[test]
    fn deterministic() {
        let keys = vec!["ssh-ed25519 AAAAC3 a".to_owned(), "ssh-ed25519 AAAAC3 b".to_owned()];
        assert_eq!(agent_user_data(&keys, &token()).unwrap(), agent_user_data(&keys, &token()).unwrap());
    }

    #[test]
    fn too_large_is_an_error_and_the_limit_itself_fits() {
        let big = vec![format!("ssh-rsa {}", "A".repeat(16 * 1024)); 20];
        match agent_user_data(&big, &token()) {
            Err(CloudInitError::TooLarge { size, limit }) => {
                assert_eq!(limit, 32 * 1024);
                assert!(size > 20 * 16 * 1024);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Exactly at the limit is accepted, one byte more is not.
        let base = agent_user_data(&["ssh-rsa A".to_owned()], &token()).unwrap().expose().len();
        let fits = vec![format!("ssh-rsa {}", "A".repeat(1 + USER_DATA_LIMIT - base))];
        assert_eq!(agent_user_data(&fits, &token()).unwrap().expose().len(), USER_DATA_LIMIT);
        let over = vec![format!("ssh-rsa {}", "A".repeat(2 + USER_DATA_LIMIT - base))];
        assert!(matches!(agent_user_data(&over, &token()), Err(CloudInitError::TooLarge { .. })));
        // The fixed part leaves room for many keys.
        assert!(agent_user_data(&[], &token()).unwrap().expose().len() < 4 * 1024);
    }

    #[test]
    fn keys_that_would_add_lines_are_refused() {
        for bad in ["ssh-ed25519 AAAA a\nssh-rsa BBBB b", "ssh-ed25519 AAAA a\rb", "a\u{85}b", "a\u{2028}b", "a\0b", ""]
        {
            let keys = vec!["ssh-ed25519 AAAA ok".to_owned(), bad.to_owned()];
            let err = agent_user_data(&keys, &token()).unwrap_err();
            assert!(matches!(err, CloudInitError::InvalidSshKey { index: 1, .. }), "{bad:?}: {err:?}");
        }
        assert!(matches!(
            agent_user_data(&["   ".to_owned()], &token()),
            Err(CloudInitError::InvalidSshKey { index: 0, reason: "is empty" })
        ));
    }

    #[test]
    fn malformed_tokens_are_refused_without_being_echoed() {
        let not_json = B64.encode("hello");
        let wrong_shape = B64.encode(r#"{"a":"x","t":"y"}"#);
        for bad in ["", "eyJ not base64\nExecStart=/bin/sh", not_json.as_str(), wrong_shape.as_str()] {
            let err = agent_user_data(&[], &Secret::new(bad)).unwrap_err();
            assert!(matches!(err, CloudInitError::MalformedTunnelToken { .. }), "{bad:?}: {err:?}");
            assert!(bad.is_empty() || !err.to_string().contains(bad), "the error never carries the token");
        }
    }
}
