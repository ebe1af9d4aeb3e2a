//! `crabglamp-sandbox`: the Kubernetes API server, the Hetzner and Cloudflare
//! simulators, PostgreSQL and Redis in one process, with a kubeconfig and a JSON file naming
//! every endpoint and credential, until Ctrl-C.
//!
//! It only wires existing pieces together and prints what it did; it never changes what the
//! simulators or the API server do. The one thing it adds is a stand-in for `cloudflared` on
//! every booted simulated server ([`cloudflared`]).

pub mod activity;
pub mod cloudflared;
pub mod controllers;
pub mod manifests;
pub mod services;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use crabglamp_operator::cloud::cloudflare::CloudflareConfig;
use crabglamp_operator::cloud::hetzner::HetznerConfig;
use crabglamp_operator::operator::StartError;
use crabglamp_operator::store::seal::SealingKeys;
use rand::RngCore;
use serde_json::json;
use tokio::net::TcpListener;

use crate::cloudflare::{self, CloudflareSimConfig};
use crate::hetzner::{self, HetznerSimConfig};
use crate::http::control::FaultRuleSpec;
use crate::http::{FaultPlan, RunningSim};
use crate::kube::{self, KubeApiConfig};
use crate::sim_cli::{HetznerArgs, check_time_scale, fault_plan, parse_duration};

/// The database the sandbox creates (when missing) and migrates on the PostgreSQL it uses.
pub const SANDBOX_DATABASE: &str = "crabglamp_sandbox";
/// The id of the sandbox's sealing key (see [`Sandbox::sealing_key`]).
pub const SANDBOX_SEALING_KEY_ID: &str = "sandbox";

/// Options of the `sandbox` command.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Where to write the kubeconfig for kubectl and the operator.
    #[arg(long, default_value = "sandbox.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Where to write the JSON file with every endpoint and credential.
    #[arg(long, default_value = "sandbox.json")]
    pub info: PathBuf,
    /// Where to write the same endpoints and credentials as the environment variables
    /// `crabglamp-operator` reads (`set -a; . ./sandbox.env; set +a`), e.g. for `audit verify`.
    #[arg(long, default_value = "sandbox.env")]
    pub env_file: PathBuf,
    /// Apply the manifests (*.yaml, *.yml, *.json) in this directory at start.
    #[arg(long)]
    pub apply: Option<PathBuf>,
    /// Start throwaway PostgreSQL and Redis servers even when DATABASE_URL/REDIS_URL are set or
    /// servers answer on localhost (an isolated sandbox).
    #[arg(long)]
    pub fresh_services: bool,
    /// Port of the Kubernetes API server (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// How much faster than real time the simulated clouds run: actions, boots, cloudflared,
    /// Hetzner's rate refill and Cloudflare's five-minute rate window all take 1/N of their
    /// simulated duration.
    #[arg(long, default_value_t = DEFAULT_TIME_SCALE)]
    pub time_scale: f64,
    #[command(flatten)]
    pub hetzner: HetznerArgs,
    /// How long a booted server's cloudflared takes to connect its tunnel (simulated time).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub cloudflared_delay: Duration,
    /// A Hetzner fault rule `METHOD ROUTE RATE [ERROR] [lost]`, e.g. `POST /v1/servers 0.2`;
    /// repeatable.
    #[arg(long = "hcloud-fault", value_name = "RULE")]
    pub hcloud_faults: Vec<FaultRuleSpec>,
    /// A Cloudflare fault rule, e.g. `POST /client/v4/accounts/{account}/cfd_tunnel 0.2`;
    /// repeatable.
    #[arg(long = "cloudflare-fault", value_name = "RULE")]
    pub cloudflare_faults: Vec<FaultRuleSpec>,
    /// A Hetzner fault plan in JSON (the body of `PUT /_sim/faults`).
    #[arg(long)]
    pub hcloud_fault_file: Option<PathBuf>,
    /// A Cloudflare fault plan in JSON.
    #[arg(long)]
    pub cloudflare_fault_file: Option<PathBuf>,
    /// Seed of both simulators' fault dice.
    #[arg(long, default_value_t = 0)]
    pub fault_seed: u64,
    /// Do not run the operator's controllers in this process (to point `crabglamp-operator
    /// run` at the sandbox instead, with the endpoints in the info file).
    #[arg(long)]
    pub no_controllers: bool,
}

/// Fast enough that a server is up in seconds, slow enough to watch its states go by.
pub const DEFAULT_TIME_SCALE: f64 = 10.0;

/// Why the sandbox could not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A socket or file could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The API server did not start.
    #[error("the Kubernetes API server did not start: {0}")]
    Kube(#[from] kube::StartError),
    /// The sandbox database could not be created or migrated.
    #[error("cannot prepare the sandbox database: {0}")]
    Store(#[from] crabglamp_operator::store::StoreError),
    /// PostgreSQL or Redis is unavailable.
    #[error("{0}")]
    Service(#[from] services::ServiceError),
    /// The in-process controllers could not start.
    #[error("cannot start the controllers: {0}")]
    Controllers(#[from] crabglamp_operator::operator::StartError),
    /// A flag is out of range or a fault plan file is unreadable.
    #[error("{0:#}")]
    Config(anyhow::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

async fn loopback(port: u16, what: &str) -> Result<TcpListener, SandboxError> {
    TcpListener::bind(("127.0.0.1", port)).await.map_err(io(format!("cannot listen for the {what}")))
}

/// What a sandbox needs besides its ports.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Port of the Kubernetes API server (0 = any free port).
    pub kube_port: u16,
    /// Always start throwaway PostgreSQL and Redis.
    pub fresh_services: bool,
    /// The Hetzner project (its time scale included).
    pub hetzner: HetznerSimConfig,
    /// The Cloudflare account (its time scale included).
    pub cloudflare: CloudflareSimConfig,
    /// Faults each simulator starts with.
    pub hcloud_faults: FaultPlan,
    pub cloudflare_faults: FaultPlan,
}

impl SandboxOptions {
    /// The options the flags ask for.
    pub fn from_args(args: &SandboxArgs) -> Result<Self, SandboxError> {
        check_time_scale(args.time_scale).map_err(SandboxError::Config)?;
        let plan = |file: &Option<PathBuf>, rules: &[FaultRuleSpec]| {
            fault_plan(file.as_deref(), rules, args.fault_seed).map_err(SandboxError::Config)
        };
        let hetzner = args
            .hetzner
            .apply(HetznerSimConfig { time_scale: args.time_scale, ..HetznerSimConfig::default() })
            .map_err(SandboxError::Config)?;
        Ok(SandboxOptions {
            kube_port: args.port,
            fresh_services: args.fresh_services,
            hetzner,
            cloudflare: CloudflareSimConfig { time_scale: args.time_scale, ..CloudflareSimConfig::default() },
            hcloud_faults: plan(&args.hcloud_fault_file, &args.hcloud_faults)?,
            cloudflare_faults: plan(&args.cloudflare_fault_file, &args.cloudflare_faults)?,
        })
    }
}

/// Every piece of a running sandbox: the same fixtures the `sandbox` command and integration
/// tests use. Dropping it stops the servers; call [`Sandbox::stop`] to also stop throwaway
/// PostgreSQL and Redis and remove their directory.
pub struct Sandbox {
    /// The Kubernetes API server.
    pub kube: kube::RunningKube,
    /// The Hetzner Cloud simulator (base URL ends in `/v1`).
    pub hcloud: RunningSim,
    /// Its configuration (token).
    pub hetzner_config: HetznerSimConfig,
    /// The Cloudflare simulator (base URL ends in `/client/v4`).
    pub cloudflare: RunningSim,
    /// Its configuration (token, account, zone).
    pub cloudflare_config: CloudflareSimConfig,
    /// The key (standard base64) the sandbox's controllers seal credentials and authenticate
    /// the audit anchor under, id [`SANDBOX_SEALING_KEY_ID`]: random per sandbox run (its
    /// tunnels live no longer than it), and written to the info and env files so that
    /// `crabglamp-operator audit verify` can check the anchor.
    pub sealing_key: String,
    /// PostgreSQL.
    pub postgres: services::Service,
    /// The sandbox's own database on that server, migrated (not whichever database the
    /// server URL names, so the sandbox never fills someone's `postgres` database).
    pub database_url: String,
    /// Redis.
    pub redis: services::Service,
    /// The reference LLM proxy stand-in on that Redis (none when it could not start).
    pub llm_proxy: Option<crate::llm_proxy::RunningProxy>,
    workdir: PathBuf,
}

impl Sandbox {
    /// Starts every piece.
    pub async fn start(options: SandboxOptions) -> Result<Self, SandboxError> {
        let kube_api =
            kube::spawn(KubeApiConfig::default(), loopback(options.kube_port, "Kubernetes API server").await?).await?;
        let hetzner_config = options.hetzner.clone();
        let hcloud = hetzner::spawn(hetzner_config.clone(), loopback(0, "Hetzner simulator").await?)
            .await
            .map_err(io("cannot start the Hetzner simulator"))?;
        hcloud.set_faults(options.hcloud_faults.clone());
        let cloudflare_config = options.cloudflare.clone();
        let cf = cloudflare::spawn(cloudflare_config.clone(), loopback(0, "Cloudflare simulator").await?)
            .await
            .map_err(io("cannot start the Cloudflare simulator"))?;
        cf.set_faults(options.cloudflare_faults.clone());

        let workdir = std::env::temp_dir().join(format!("crabglamp-sandbox-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&workdir).map_err(io(format!("cannot create {}", workdir.display())))?;
        let postgres = services::postgres(&workdir, options.fresh_services).await;
        let redis = services::redis(&workdir, options.fresh_services).await;
        let (postgres, redis) = match (postgres, redis) {
            (Ok(p), Ok(r)) => (p, r),
            (p, r) => {
                let mut first_error = None;
                for result in [p, r] {
                    match result {
                        Ok(service) => service.stop().await,
                        Err(e) => first_error = first_error.or(Some(e)),
                    }
                }
                let _ = std::fs::remove_dir_all(&workdir);
                return Err(first_error.map(SandboxError::from).unwrap_or_else(|| SandboxError::Io {
                    what: "services".into(),
                    source: std::io::Error::other("unknown failure"),
                }));
            }
        };
        let database_url =
            match crabglamp_operator::store::ensure_migrated_database(&postgres.url, SANDBOX_DATABASE).await {
                Ok(url) => url,
                Err(e) => {
                    postgres.stop().await;
                    redis.stop().await;
                    let _ = std::fs::remove_dir_all(&workdir);
                    return Err(e.into());
                }
            };
        let mut proxy_config = crate::llm_proxy::ProxyConfig::new(redis.url.clone());
        if let Some(cost) = std::env::var("SANDBOX_PROXY_COST_MICROS").ok().and_then(|c| c.parse().ok()) {
            proxy_config.cost_micros_per_request = cost;
        }
        // The demo works without it; a proxy that cannot start is reported, not fatal.
        let llm_proxy = match loopback(0, "LLM proxy stand-in").await {
            Ok(listener) => match crate::llm_proxy::spawn(proxy_config, listener).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "the LLM proxy stand-in did not start");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "the LLM proxy stand-in did not start");
                None
            }
        };
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Ok(Self {
            sealing_key: base64::engine::general_purpose::STANDARD.encode(key),
            kube: kube_api,
            llm_proxy,
            hcloud,
            hetzner_config,
            cloudflare: cf,
            cloudflare_config,
            postgres,
            database_url,
            redis,
            workdir,
        })
    }

    /// Every endpoint and credential, as written to `--info` (`kubeconfig` is the given path).
    pub fn info(&self, kubeconfig: &std::path::Path) -> serde_json::Value {
        json!({
            "kubeconfig": kubeconfig.display().to_string(),
            "kube_api": self.kube.base_url,
            "hcloud_endpoint": self.hcloud.base_url,
            "hcloud_token": self.hetzner_config.token,
            "hcloud_control": self.hcloud.control_url(),
            "cloudflare_endpoint": self.cloudflare.base_url,
            "cloudflare_control": self.cloudflare.control_url(),
            "cloudflare_token": self.cloudflare_config.token,
            "cloudflare_account_id": self.cloudflare_config.account_id,
            "cloudflare_zone_id": self.cloudflare_config.zone_id,
            "cloudflare_zone_name": self.cloudflare_config.zone_name,
            "database_url": self.database_url,
            "redis_url": self.redis.url,
            "llm_proxy": self.llm_proxy.as_ref().map(|p| p.base_url.clone()),
            "time_scale": self.cloudflare_config.time_scale,
            "sealing_key": self.sealing_key,
            "sealing_key_id": SANDBOX_SEALING_KEY_ID,
        })
    }

    /// Where the in-process controllers (or `crabglamp-operator run`) reach this sandbox.
    pub fn reach(&self) -> controllers::Reach {
        controllers::Reach {
            database_url: self.database_url.clone(),
            redis_url: self.redis.url.clone(),
            hetzner: HetznerConfig::new(self.hcloud.base_url.clone(), self.hetzner_config.token.clone()),
            cloudflare: CloudflareConfig::new(
                self.cloudflare.base_url.clone(),
                self.cloudflare_config.token.clone(),
                self.cloudflare_config.account_id.clone(),
                self.cloudflare_config.zone_id.clone(),
            ),
            zone_name: self.cloudflare_config.zone_name.clone(),
        }
    }

    /// Starts the operator's controllers in this process, against this sandbox.
    pub async fn start_controllers(&self, time_scale: f64) -> Result<controllers::InProcess, StartError> {
        let client = self.kube.client().map_err(|e| StartError::Kube(e.to_string()))?;
        controllers::start(client, self.reach(), self.sealing_keys()?, time_scale).await
    }

    /// The sealing keys of the sandbox's controllers.
    pub fn sealing_keys(&self) -> Result<SealingKeys, crabglamp_operator::store::seal::SealError> {
        SealingKeys::new(SANDBOX_SEALING_KEY_ID, &self.sealing_key, &[])
    }

    /// The environment `crabglamp-operator` reads to work against this sandbox, one
    /// `NAME='value'` line each (POSIX shell quoting), for `--env-file`.
    pub fn env_file(&self, kubeconfig: &std::path::Path) -> String {
        let vars = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("DATABASE_URL", self.database_url.clone()),
            ("REDIS_URL", self.redis.url.clone()),
            ("HCLOUD_ENDPOINT", self.hcloud.base_url.clone()),
            ("HCLOUD_TOKEN", self.hetzner_config.token.clone()),
            ("CLOUDFLARE_ENDPOINT", self.cloudflare.base_url.clone()),
            ("CLOUDFLARE_API_TOKEN", self.cloudflare_config.token.clone()),
            ("CLOUDFLARE_ACCOUNT_ID", self.cloudflare_config.account_id.clone()),
            ("CLOUDFLARE_ZONE_ID", self.cloudflare_config.zone_id.clone()),
            ("CLOUDFLARE_ZONE_NAME", self.cloudflare_config.zone_name.clone()),
            (crabglamp_operator::store::seal::SEALING_KEY_ENV, self.sealing_key.clone()),
            (crabglamp_operator::store::seal::SEALING_KEY_ID_ENV, SANDBOX_SEALING_KEY_ID.to_owned()),
        ];
        vars.iter().map(|(name, value)| format!("{name}='{}'\n", value.replace('\'', r"'\''"))).collect()
    }

    /// Stops everything, throwaway PostgreSQL and Redis included.
    pub async fn stop(self) {
        let Self { kube, hcloud, cloudflare, postgres, redis, workdir, llm_proxy, .. } = self;
        drop(llm_proxy);
        postgres.stop().await;
        redis.stop().await;
        let _ = std::fs::remove_dir_all(&workdir);
        drop((hcloud, cloudflare, kube));
    }
}

/// Runs the sandbox until Ctrl-C.
pub async fn run(args: SandboxArgs) -> Result<(), SandboxError> {
    let sandbox = Sandbox::start(SandboxOptions::from_args(&args)?).await?;
    let written = std::fs::write(&args.kubeconfig, sandbox.kube.kubeconfig_yaml())
        .map_err(io(format!("cannot write {}", args.kubeconfig.display())))
        .and_then(|()| {
            let kubeconfig_abs = std::fs::canonicalize(&args.kubeconfig).unwrap_or_else(|_| args.kubeconfig.clone());
            let pretty = serde_json::to_string_pretty(&sandbox.info(&kubeconfig_abs)).unwrap_or_default();
            std::fs::write(&args.info, format!("{pretty}\n"))
                .map_err(io(format!("cannot write {}", args.info.display())))?;
            std::fs::write(&args.env_file, sandbox.env_file(&kubeconfig_abs))
                .map_err(io(format!("cannot write {}", args.env_file.display())))
        });
    if let Err(e) = written {
        sandbox.stop().await;
        return Err(e);
    }

    println!("crabglamp sandbox is running");
    println!("  Kubernetes API   {}  (CRDs installed)", sandbox.kube.base_url);
    println!("  Hetzner Cloud    {}  (control: {})", sandbox.hcloud.base_url, sandbox.hcloud.control_url());
    println!("  Cloudflare       {}  (control: {})", sandbox.cloudflare.base_url, sandbox.cloudflare.control_url());
    // DATABASE_URL/REDIS_URL may carry passwords: those stay in the info file, not on the terminal.
    println!(
        "  PostgreSQL       {} ({}, migrated)",
        crabglamp_operator::store::redact_url(&sandbox.database_url),
        sandbox.postgres.origin
    );
    println!(
        "  Redis            {} ({})",
        crabglamp_operator::store::redact_url(&sandbox.redis.url),
        sandbox.redis.origin
    );
    println!("  kubeconfig       {}", args.kubeconfig.display());
    println!("  endpoints+tokens {} (as environment variables: {})", args.info.display(), args.env_file.display());
    println!(
        "Simulated time runs {}x real time (--time-scale): actions, server boots, cloudflared and Cloudflare's \
         five-minute rate window take 1/{} of their simulated duration.",
        args.time_scale, args.time_scale
    );
    println!(
        "Booted servers whose user_data carries a valid tunnel token connect their tunnel (a stand-in cloudflared)."
    );
    let controllers = if args.no_controllers {
        println!(
            "Controllers: not running here (--no-controllers); point `crabglamp-operator run` at {}.",
            args.info.display()
        );
        None
    } else {
        match sandbox.start_controllers(args.time_scale).await {
            Ok(c) => {
                println!("Controllers: running in this process (Agents become servers behind tunnels).");
                Some(c)
            }
            Err(e) => {
                sandbox.stop().await;
                return Err(e.into());
            }
        }
    };

    if let Some(dir) = &args.apply {
        for outcome in manifests::apply_dir(&sandbox.kube, dir) {
            println!("  {outcome}");
        }
    }

    let kc = args.kubeconfig.display();
    println!();
    println!("Try this (from another shell):");
    println!("  export KUBECONFIG={kc}");
    println!("  kubectl apply -f examples/");
    println!("  kubectl get crabglamp -A");
    println!("  kubectl get agents -n team-a -w");
    println!("  kubectl describe agent research-bot -n team-a");
    println!("  kubectl apply -f examples/invalid/agent-unknown-region.yaml   # refused with its rule");
    let activity = match sandbox.kube.client() {
        Ok(client) => Some(activity::start(client).await),
        Err(_) => None,
    };
    let cloudflared = cloudflared::start(
        sandbox.hcloud.handle(),
        sandbox.cloudflare.handle(),
        args.time_scale,
        args.cloudflared_delay,
    );
    println!("Press Ctrl-C to stop. Changes to Agents, PlainVMs and VirtualKeys are listed below.");
    // Ctrl-C or SIGTERM, so throwaway servers are stopped either way.
    crabglamp_operator::operator::wait_for_signal().await;
    if let Some(c) = controllers {
        c.stop().await;
    }
    cloudflared.abort();
    if let Some(task) = activity {
        task.abort();
    }
    println!("stopping");
    sandbox.stop().await;
    Ok(())
}
