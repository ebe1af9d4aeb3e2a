//! The operator's container image, built without a container engine: scripts/image turns the
//! binary cargo built for these tests into an OCI image layout, umoci (Debian's, an independent
//! reader of the OCI spec) verifies and unpacks it, and the binary runs inside the unpacked root
//! filesystem as the image's non-root user. Also: the same inputs give the same manifest digest,
//! the layer holds only what the image needs, its config says what the Containerfile says, and
//! the chart's default image is the one the release workflow pushes. Needs umoci (scripts/test
//! installs it; scripts/image installs it when run as root) and root for a chroot, or else
//! unprivileged user namespaces; a missing tool fails, never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crabglamp_testkit::helm;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// SOURCE_DATE_EPOCH of every build here: fixed, because the script's default (the last
/// commit's time) moves whenever anybody commits during a run.
const EPOCH: &str = "1767225600";
const CREATED: &str = "2026-01-01T00:00:00Z";
/// The non-root user the image runs as (the chart's runAsUser and runAsGroup).
const IMAGE_UID: u32 = 65532;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary cargo built for this test run (debug; the script defaults to the release one).
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crabglamp-operator"))
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A program from PATH or the sbin directories (chroot lives in /usr/sbin, often not on PATH).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (Debian: coreutils/util-linux); the image test needs it"))
}

/// This process's effective uid (from /proc: nix is built here without its `user` feature).
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("a Uid: line");
    line.split_whitespace().nth(2).and_then(|u| u.parse().ok()).expect("the effective uid")
}

/// One run of scripts/image: the manifest digest it printed. `umask 077` shows that the
/// caller's umask cannot leak into the image.
fn build(binary: &Path, layout: &Path, unpack: Option<&Path>) -> String {
    let script = repo().join("scripts/image");
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(r#"umask 077 && exec "$0" "$@""#).arg(&script);
    cmd.arg("--binary").arg(binary).arg("--out").arg(layout);
    if let Some(dir) = unpack {
        cmd.arg("--unpack").arg(dir);
    }
    let out =
        cmd.env("SOURCE_DATE_EPOCH", EPOCH).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "scripts/image failed:\n{}", show(&out));
    let digest = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
    assert!(
        digest.len() == 71 && digest.starts_with("sha256:"),
        "scripts/image must print only the manifest digest, printed {digest:?}"
    );
    digest
}

fn json_file(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs/sha256").join(hex)
}

/// A blob, checked against its digest.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let bytes = std::fs::read(blob_path(layout, digest)).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))), digest, "blob content");
    bytes
}

/// The layout's one manifest (as index.json names it, with the version as its tag) and its config.
fn manifest_and_config(layout: &Path, digest: &str) -> (Value, Value) {
    let index = json_file(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("index.json manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["digest"], digest, "index.json names the digest scripts/image printed");
    assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], env!("CARGO_PKG_VERSION"));
    let manifest: Value = serde_json::from_slice(&blob(layout, digest)).expect("manifest JSON");
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config: Value = serde_json::from_slice(&blob(layout, manifest["config"]["digest"].as_str().expect("config")))
        .expect("config JSON");
    (manifest, config)
}

/// Every file of a directory tree with its bytes, by relative path.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).expect("inside").to_owned(), std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The shared objects `ldd` says the binary loads, as absolute paths.
fn linked_objects(binary: &Path) -> Vec<String> {
    let out = Command::new(tool("ldd")).arg(binary).env("LC_ALL", "C").output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        assert!(text.contains("not a dynamic executable"), "ldd failed:\n{}", show(&out));
        return Vec::new();
    }
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest,
                None => line,
            };
            path.starts_with('/').then(|| path.split(" (").next().expect("path").to_owned())
        })
        .collect()
}

/// One entry of the layer as `tar --list --verbose` shows it.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    time: String,
    name: String,
}

/// The layer's entries, read by tar from the gzip blob.
fn layer_entries(layer: &Path) -> Vec<Entry> {
    let out = Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "--full-time", "--gzip", "--file"])
        .arg(layer)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar cannot list the layer:\n{}", show(&out));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 6, "unexpected tar line (a link or a name with spaces?): {line}");
            Entry {
                mode: f[0].to_owned(),
                owner: f[1].to_owned(),
                time: format!("{} {}", f[3], f[4]),
                name: f[5].to_owned(),
            }
        })
        .collect()
}

/// The final stage of the Containerfile: its instructions as (keyword, rest), after `FROM`.
fn containerfile_final_stage() -> (String, Vec<(String, String)>) {
    let text = std::fs::read_to_string(repo().join("Containerfile")).expect("Containerfile at the top level");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let from = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("a FROM");
    let base = lines[from]["FROM ".len()..].trim().to_owned();
    let instructions = lines[from + 1..]
        .iter()
        .map(|l| {
            let (keyword, rest) = l.split_once(' ').unwrap_or((l, ""));
            (keyword.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect();
    (base, instructions)
}

/// The image config the Containerfile's final stage declares, in the OCI config's terms.
fn containerfile_config() -> Value {
    let (base, instructions) = containerfile_final_stage();
    assert_eq!(base, "scratch", "the final stage starts empty: no shell, no package manager");
    let mut args = BTreeMap::new();
    let mut config = serde_json::Map::new();
    let mut env = Vec::new();
    let mut labels = serde_json::Map::new();
    let mut ports = serde_json::Map::new();
    for (keyword, rest) in instructions {
        match keyword.as_str() {
            "ARG" => {
                let (name, default) = rest.split_once('=').expect("ARG with a default in the final stage");
                args.insert(name.to_owned(), default.to_owned());
            }
            "COPY" => assert!(rest.starts_with("--from="), "the final stage copies only from the build stage: {rest}"),
            "ENV" => env.push(Value::from(rest)),
            "USER" => _ = config.insert("User".into(), rest.into()),
            "WORKDIR" => _ = config.insert("WorkingDir".into(), rest.into()),
            "EXPOSE" => _ = ports.insert(format!("{rest}/tcp"), json!({})),
            "ENTRYPOINT" => {
                let entrypoint: Value = serde_json::from_str(&rest).expect("ENTRYPOINT in exec form (JSON)");
                config.insert("Entrypoint".into(), entrypoint);
            }
            "LABEL" => {
                let (key, value) = rest.split_once('=').expect("LABEL key=\"value\"");
                let mut value = value.trim_matches('"').to_owned();
                for (name, default) in &args {
                    value = value.replace(&format!("${{{name}}}"), default);
                }
                labels.insert(key.to_owned(), value.into());
            }
            other => panic!("unexpected {other} in the final stage (nothing runs there: it has no shell)"),
        }
    }
    assert_eq!(
        args.get("VERSION").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION")),
        "the Containerfile's ARG VERSION default follows Cargo.toml"
    );
    config.insert("Env".into(), env.into());
    config.insert("ExposedPorts".into(), ports.into());
    config.insert("Labels".into(), labels.into());
    Value::Object(config)
}

/// How the test runs a program as the image's user, inside its root filesystem: as root, a
/// chroot that then drops to 65532:65532 (the user a kubelet would start); otherwise an
/// unprivileged user namespace that maps this user to 65532 and chroots there.
fn in_image(rootfs: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = if effective_uid() == 0 {
        let mut c = Command::new(tool("chroot"));
        c.arg(format!("--userspec={IMAGE_UID}:{IMAGE_UID}")).arg(rootfs);
        c
    } else {
        let mut c = Command::new(tool("unshare"));
        c.args(["--user", &format!("--map-user={IMAGE_UID}"), &format!("--map-group={IMAGE_UID}")]);
        c.arg(format!("--root={}", rootfs.display()));
        c
    };
    // Only the environment the image's config gives (PATH finds the entrypoint in the image).
    cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v))).args(args);
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn host(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().expect("run the host binary")
}

#[test]
fn binary_runs_in_the_image_as_the_non_root_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, bundle) = (dir.path().join("layout"), dir.path().join("bundle"));
    let digest = build(&binary(), &layout, Some(&bundle));
    let (manifest, config) = manifest_and_config(&layout, &digest);

    // The config: what the Containerfile says, the crate's metadata, the chart's port.
    let expected = containerfile_config();
    for key in ["User", "WorkingDir", "Entrypoint", "Env", "ExposedPorts", "Labels"] {
        assert_eq!(config["config"][key], expected[key], "config.{key}: scripts/image and the Containerfile differ");
    }
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["org.opencontainers.image.licenses"], env!("CARGO_PKG_LICENSE"));
    assert_eq!(labels["org.opencontainers.image.description"], env!("CARGO_PKG_DESCRIPTION"));
    assert!(labels["org.opencontainers.image.source"].as_str().is_some_and(|s| s.starts_with("https://")), "{labels}");
    assert_eq!(
        config["config"]["User"],
        format!("{IMAGE_UID}:{IMAGE_UID}"),
        "a numeric user: runAsNonRoot can check it"
    );
    let values: Value = serde_norway::from_str(
        &std::fs::read_to_string(helm::chart_dir().join("values.yaml")).expect("the chart's values.yaml"),
    )
    .expect("values.yaml parses");
    let port = format!("{}/tcp", values["metrics"]["port"]);
    assert!(config["config"]["ExposedPorts"].get(&port).is_some(), "the image exposes the chart's metrics.port {port}");
    assert_eq!(config["created"], CREATED, "created is SOURCE_DATE_EPOCH");
    assert_eq!(config["os"], "linux");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(config["architecture"], arch);

    // The one layer: its diff_id, and only the binary, what it links, the CA bundle and the
    // user's files, all root's, at one mtime, nothing the user can write but /tmp.
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer_digest = layers[0]["digest"].as_str().expect("layer digest");
    blob(&layout, layer_digest);
    let entries = layer_entries(&blob_path(&layout, layer_digest));
    let mut expected: BTreeSet<String> = [
        "etc/",
        "etc/group",
        "etc/nsswitch.conf",
        "etc/passwd",
        "etc/ssl/",
        "etc/ssl/certs/",
        "etc/ssl/certs/ca-certificates.crt",
        "tmp/",
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "usr/local/bin/crabglamp-operator",
    ]
    .map(String::from)
    .into();
    for object in linked_objects(&binary()) {
        let relative = object.trim_start_matches('/');
        let mut parent = Path::new(relative).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            expected.insert(format!("{}/", p.display()));
            parent = p.parent();
        }
        expected.insert(relative.to_owned());
    }
    let names: BTreeSet<String> = entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, expected, "the layer holds exactly the binary, what it links, CA certificates and the user");
    for e in &entries {
        assert_eq!(e.owner, "0/0", "{e:?}");
        assert_eq!(e.time, CREATED.replace('T', " ").trim_end_matches('Z'), "every mtime is SOURCE_DATE_EPOCH: {e:?}");
        let writable_by_others = e.mode.as_bytes()[5] == b'w' || e.mode.as_bytes()[8] == b'w';
        assert!(!e.mode.contains(['s', 'S']), "no set-id bits: {e:?}");
        if e.name == "tmp/" {
            assert_eq!(e.mode, "drwxrwxrwt", "{e:?}");
        } else {
            assert!(!writable_by_others, "only root may write {e:?}");
        }
    }
    let uncompressed =
        Command::new("gzip").arg("-dc").arg(blob_path(&layout, layer_digest)).output().expect("gzip -dc the layer");
    assert!(uncompressed.status.success());
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([format!("sha256:{}", hex::encode(Sha256::digest(&uncompressed.stdout)))]),
        "diff_ids name the uncompressed layer"
    );
    let passwd = std::fs::read_to_string(bundle.join("rootfs/etc/passwd")).expect("the image's /etc/passwd");
    assert!(passwd.lines().any(|l| l.starts_with(&format!("nonroot:x:{IMAGE_UID}:{IMAGE_UID}:"))), "{passwd}");

    // What umoci made of it: the runtime config a runtime would start from.
    let runtime = json_file(&bundle.join("config.json"));
    assert_eq!(runtime["process"]["user"]["uid"], IMAGE_UID, "umoci: {}", runtime["process"]);
    assert_eq!(runtime["process"]["user"]["gid"], IMAGE_UID, "umoci: {}", runtime["process"]);
    assert_eq!(runtime["process"]["args"], json!(["crabglamp-operator"]), "umoci: {}", runtime["process"]);
    let env: Vec<(String, String)> = runtime["process"]["env"]
        .as_array()
        .expect("process.env")
        .iter()
        .map(|v| {
            let (k, v) = v.as_str().expect("string").split_once('=').expect("NAME=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(env.iter().any(|(k, _)| k == "PATH"), "{env:?}");

    // The binary in the image, started by its entrypoint's name, as 65532: the same output as
    // the host's binary.
    let rootfs = bundle.join("rootfs");
    for args in [&["--version"][..], &["crd"][..]] {
        let mut argv = vec!["crabglamp-operator"];
        argv.extend_from_slice(args);
        let inside = in_image(&rootfs, &env, &argv);
        assert!(inside.status.success(), "{argv:?} in the image:\n{}", show(&inside));
        let outside = host(args);
        assert!(outside.status.success(), "{args:?} on the host:\n{}", show(&outside));
        assert!(!inside.stdout.is_empty(), "{argv:?} printed nothing");
        assert!(inside.stdout == outside.stdout, "{argv:?}: the image's output differs from the host binary's");
    }

    // Files it writes belong to 65532:65532 (the process really ran as that user), and only
    // /tmp takes them.
    let inside = in_image(&rootfs, &env, &["crabglamp-operator", "crd", "--out-dir", "/tmp"]);
    assert!(inside.status.success(), "crd --out-dir /tmp in the image:\n{}", show(&inside));
    let on_host = dir.path().join("host-crds");
    std::fs::create_dir(&on_host).expect("mkdir");
    let outside = host(&["crd", "--out-dir", on_host.to_str().expect("utf-8 path")]);
    assert!(outside.status.success(), "{}", show(&outside));
    let written = tree(&rootfs.join("tmp"));
    assert_eq!(written, tree(&on_host), "crd --out-dir in the image writes what the host binary writes");
    if effective_uid() == 0 {
        for name in written.keys() {
            let meta = std::fs::metadata(rootfs.join("tmp").join(name)).expect("stat");
            assert_eq!((meta.uid(), meta.gid()), (IMAGE_UID, IMAGE_UID), "{} was written as root", name.display());
        }
        let refused = in_image(&rootfs, &env, &["crabglamp-operator", "crd", "--out-dir", "/etc"]);
        assert!(!refused.status.success(), "the non-root user could write /etc:\n{}", show(&refused));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("Permission denied"), "{}", show(&refused));
    } else {
        // A rootless unpack leaves the files to this user, which the namespace maps to 65532:
        // ownership was checked on the layer above instead.
        eprintln!("not root: ran in a user namespace; /etc write refusal is only checked as root");
    }
}

#[test]
fn same_inputs_give_the_same_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The same content under another path, with another mtime and mode: not inputs.
    let copy = dir.path().join("elsewhere/crabglamp-operator");
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
    std::fs::copy(binary(), &copy).expect("copy the binary");
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let first = build(&binary(), &dir.path().join("first"), None);
    let second = build(&copy, &dir.path().join("second"), None);
    assert_eq!(first, second, "the same binary, CA bundle and SOURCE_DATE_EPOCH must give the same manifest digest");
    let (a, b) = (tree(&dir.path().join("first")), tree(&dir.path().join("second")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the same files in both layouts");
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{} differs between two builds of the same inputs", name.display());
    }
    manifest_and_config(&dir.path().join("first"), &first);
    eprintln!("manifest digest, twice: {first}");
}

#[test]
fn chart_default_image_is_the_one_the_release_pushes() {
    // The release workflow pushes <values.yaml image.repository>:<Chart.yaml appVersion>;
    // tests/chart/files.rs keeps appVersion equal to Cargo.toml's version.
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(helm::chart_dir().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml parses");
    let values: Value =
        serde_norway::from_str(&std::fs::read_to_string(helm::chart_dir().join("values.yaml")).expect("values.yaml"))
            .expect("values.yaml parses");
    let repository = values["image"]["repository"].as_str().expect("image.repository");
    let app_version = chart["appVersion"].as_str().expect("appVersion");
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"));
    let deployment = helm::one(&helm::defaults(), "Deployment").clone();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("{repository}:{app_version}"),
        "helm template with default values must name the image the release workflow pushes"
    );

    let text = std::fs::read_to_string(repo().join(".github/workflows/release.yaml")).expect("the release workflow");
    let workflow: Value = serde_norway::from_str(&text).expect("release.yaml parses");
    assert!(workflow["on"]["push"]["tags"].as_array().is_some_and(|t| !t.is_empty()), "runs on version tags");
    let jobs = workflow["jobs"].as_object().expect("jobs");
    let steps = || jobs.values().flat_map(|j| j["steps"].as_array().into_iter().flatten());
    let build = steps()
        .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("docker/build-push-action@")))
        .expect("a docker/build-push-action step");
    assert_eq!(build["with"]["file"], "Containerfile", "the release builds the Containerfile");
    let arches: BTreeSet<&str> = jobs
        .values()
        .filter_map(|j| j["strategy"]["matrix"]["include"].as_array())
        .flatten()
        .filter_map(|m| m["arch"].as_str())
        .collect();
    assert_eq!(arches, BTreeSet::from(["amd64", "arm64"]), "the release builds amd64 and arm64");
    // Where it pushes and under which tag come from the chart's own files, not from a copy.
    for needle in [
        "yq -r '.image.repository' charts/crabglamp-operator/values.yaml",
        "yq -r '.appVersion' charts/crabglamp-operator/Chart.yaml",
        "--tag \"$IMAGE:$VERSION\"",
        "helm package charts/crabglamp-operator",
        "helm push",
    ] {
        assert!(text.contains(needle), "release.yaml no longer contains {needle:?}");
    }
}
