//! A server's network in miniature, in network namespaces of this machine (root needed): the
//! "server" namespace reaches a metadata service at 169.254.169.254 (a real HTTP listener in a
//! namespace of its own, serving a file at Hetzner's user-data path) and routes for a
//! "container" namespace behind it, as Docker's bridge would. Every namespace goes with the
//! value; nothing of the host's own network is touched. `scripts/test` installs the tools
//! (ensure_firewall_tools in scripts/lib/services.sh).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Hetzner's user-data path on its metadata service.
pub const USER_DATA_PATH: &str = "/hetzner/v1/userdata";

/// The tools these tests drive, each with where it comes from.
const TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("curl", "curl"),
    ("setpriv", "util-linux"),
    ("python3", "python3"),
];

/// Fails (never skips) when this machine cannot run the namespaces, with what to install.
pub fn require_tools() {
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(
        root.unwrap_or(false),
        "the metadata-restriction test makes network namespaces and firewall rules: run it as root"
    );
    for (tool, package) in TOOLS {
        assert!(
            which(tool).is_some(),
            "{tool} is missing: apt-get install {package} (scripts/test does: ensure_firewall_tools in scripts/lib/services.sh)"
        );
    }
}

/// The absolute path of `tool` on PATH (also /usr/sbin and /sbin, where root's tools live).
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        run(&[&["ip", "-n", &self.0][..], args].concat());
    }

    /// `args` inside this namespace, as root, with `path` as PATH (None: this process's).
    fn command(&self, args: &[&str], path: Option<&Path>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]).args(args);
        if let Some(p) = path {
            command.env("PATH", p);
        }
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).output();
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Who asks the metadata service.
#[derive(Clone, Copy, Debug)]
pub enum Asker {
    /// Root on the server.
    Root,
    /// An unprivileged process on the server (nobody, 65534).
    Nobody,
    /// Root in a container whose traffic the server forwards.
    Container,
}

/// The three namespaces and the listener. Fields drop in order: the listener before its
/// namespace.
pub struct ServerNet {
    _listener: Killed,
    server: Netns,
    container: Netns,
    _metadata: Netns,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl ServerNet {
    /// Builds the namespaces, starts the metadata service serving `user_data` and waits (at
    /// most 20 s) until root on the server reads it.
    pub fn start(user_data: &str, docroot: &Path) -> ServerNet {
        let id = format!("cgmd{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let metadata = Netns::new(format!("{id}-md"));
        let server = Netns::new(format!("{id}-srv"));
        let container = Netns::new(format!("{id}-ctr"));
        // Each veth pair is made directly in its two namespaces: no name in the host's.
        run(&[
            "ip",
            "link",
            "add",
            "md0",
            "netns",
            &metadata.0,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &server.0,
        ]);
        run(&[
            "ip",
            "link",
            "add",
            "br0",
            "netns",
            &server.0,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &container.0,
        ]);
        metadata.ip(&["addr", "add", "169.254.169.254/16", "dev", "md0"]);
        metadata.ip(&["link", "set", "md0", "up"]);
        metadata.ip(&["route", "add", "172.31.77.0/24", "via", "169.254.1.1"]);
        server.ip(&["addr", "add", "169.254.1.1/16", "dev", "eth0"]);
        server.ip(&["link", "set", "eth0", "up"]);
        server.ip(&["addr", "add", "172.31.77.1/24", "dev", "br0"]);
        server.ip(&["link", "set", "br0", "up"]);
        container.ip(&["addr", "add", "172.31.77.2/24", "dev", "eth0"]);
        container.ip(&["link", "set", "eth0", "up"]);
        container.ip(&["route", "add", "default", "via", "172.31.77.1"]);
        let forwarding = server.command(&["sysctl", "-qw", "net.ipv4.ip_forward=1"], None).output().expect("sysctl");
        assert!(forwarding.status.success(), "{}", String::from_utf8_lossy(&forwarding.stderr));

        let file = docroot.join(USER_DATA_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().expect("parent")).expect("docroot");
        std::fs::write(&file, user_data).expect("user data file");
        let docroot = docroot.display().to_string();
        let listener = metadata
            .command(
                &["python3", "-m", "http.server", "80", "--bind", "169.254.169.254", "--directory", &docroot],
                None,
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the metadata listener");
        let net = ServerNet { _listener: Killed(listener), server, container, _metadata: metadata };
        let deadline = Instant::now() + Duration::from_secs(20);
        while net.ask(Asker::Root).as_deref() != Ok(user_data) {
            assert!(Instant::now() < deadline, "the metadata listener did not answer root within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        net
    }

    /// Runs `argv` as root on the server with `path` as PATH; its exit status and stderr.
    pub fn run_on_server(&self, argv: &[&str], path: Option<&Path>) -> (bool, String) {
        let out = self.server.command(argv, path).output().expect("run on the server");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// What `asker` gets from the user-data path: the body, or curl's error.
    pub fn ask(&self, asker: Asker) -> Result<String, String> {
        let url = format!("http://169.254.169.254{USER_DATA_PATH}");
        let curl = ["curl", "-sS", "--fail", "--max-time", "2", url.as_str()];
        let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
        let (ns, argv) = match asker {
            Asker::Root => (&self.server, curl.to_vec()),
            Asker::Nobody => (&self.server, [&nobody[..], &curl[..]].concat()),
            Asker::Container => (&self.container, curl.to_vec()),
        };
        let out = ns.command(&argv, None).output().expect("run curl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}
