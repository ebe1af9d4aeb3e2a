//! The real validator of cloud-init user data: Debian's `cloud-init schema`, the schema a
//! server's cloud-init applies. `scripts/test` installs cloud-init (ensure_cloud_init in
//! scripts/lib/services.sh); without it the tests that use this fail rather than pass unchecked.

use std::path::Path;
use std::process::Command;

pub fn cloud_init() -> &'static str {
    let found = Command::new("cloud-init").arg("--version").output();
    match found {
        Ok(out) if out.status.success() => "cloud-init",
        _ => panic!(
            "cloud-init is not installed: the user-data tests validate with its schema checker. \
             Install it with `sudo apt-get install --no-install-recommends cloud-init` (Debian/Ubuntu), \
             or run scripts/test, which installs it (ensure_cloud_init in scripts/lib/services.sh)."
        ),
    }
}

/// `cloud-init schema --config-file` exits 0 for a valid document and 1 otherwise (22.4, Debian
/// 12); `--annotate` exits 0 even with errors there, so it only explains a failure. Deprecation
/// warnings are failures too: they become errors in later cloud-init releases.
pub fn assert_valid(name: &str, doc: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, doc).expect("write user data");
    let out = Command::new(cloud_init()).args(["schema", "--config-file"]).arg(&path).output().expect("run cloud-init");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let deprecated = format!("{stdout}{stderr}").to_lowercase().contains("deprecat");
    if !out.status.success() || !stdout.contains("Valid cloud-config") || deprecated {
        panic!(
            "{name}: cloud-init schema refused the user data ({}):\n{stdout}{stderr}\nannotated:\n{}",
            out.status,
            annotate(&path)
        );
    }
    eprintln!("{name}: {} bytes, {}", doc.len(), stdout.trim());
}

fn annotate(path: &Path) -> String {
    let out = Command::new(cloud_init()).args(["schema", "--annotate", "--config-file"]).arg(path).output();
    out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        .unwrap_or_else(|e| e.to_string())
}
