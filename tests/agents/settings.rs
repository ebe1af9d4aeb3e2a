//! `crabglamp-operator run` refuses, before it reaches any cluster, database or cloud, the
//! settings that would make it remove what an object is still creating or misfire (a sweeper
//! grace of 0, a resync of 0), naming the flag and its environment variable.

/// Runs `crabglamp-operator run` with every required setting but no cluster, plus `extra`
/// flags and `env` variables; returns whether it succeeded and its standard error.
fn run(extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_crabglamp-operator"));
    command
        .arg("run")
        .args(extra)
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("HCLOUD_TOKEN", "hz-test")
        .env("CLOUDFLARE_API_TOKEN", "cf-test")
        .env("CLOUDFLARE_ACCOUNT_ID", "account")
        .env("CLOUDFLARE_ZONE_ID", "zone")
        .env("CLOUDFLARE_ZONE_NAME", "agents.example.com")
        .env("CRABGLAMP_SEALING_KEY", "not-needed-before-the-check");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("crabglamp-operator runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_sweeper_grace_or_resync_of_zero_is_refused_at_start_by_name() {
    for (flags, env, named) in [
        (&["--sweeper-grace-seconds", "0"][..], &[][..], "--sweeper-grace-seconds (CRABGLAMP_SWEEPER_GRACE_SECONDS)"),
        (
            &[][..],
            &[("CRABGLAMP_SWEEPER_GRACE_SECONDS", "0")][..],
            "--sweeper-grace-seconds (CRABGLAMP_SWEEPER_GRACE_SECONDS)",
        ),
        (&["--resync-seconds", "0"][..], &[][..], "--resync-seconds (CRABGLAMP_RESYNC_SECONDS)"),
        (&["--shutdown-timeout-seconds", "0"][..], &[][..], "--shutdown-timeout-seconds"),
    ] {
        let (ok, stderr) = run(flags, env);
        assert!(!ok, "{flags:?} {env:?} started");
        assert!(stderr.contains("refusing to start") && stderr.contains(named), "{flags:?} {env:?}:\n{stderr}");
        // Refused before any cluster is looked for (none is configured here).
        assert!(!stderr.contains("kubeconfig"), "{stderr}");
    }
    // The same command with safe settings gets past the check to the missing cluster.
    let (ok, stderr) = run(&["--sweeper-grace-seconds", "1"], &[]);
    assert!(!ok && !stderr.contains("refusing to start") && stderr.contains("kubeconfig"), "{stderr}");
}
