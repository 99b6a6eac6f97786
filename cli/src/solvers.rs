//! `certsmith solvers list|info` and `certsmith plugin check`: everything the
//! CLI says about plugins comes from their manifests, read at load time.

use std::path::PathBuf;
use std::time::Duration;

use certsmith_core::plugin::check::{CheckOptions, default_http_base, run_checks};
use certsmith_core::plugin::{
    ConfigSources, LoadPolicy, LoadedPlugin, PluginHost, PluginHostError, SearchPath,
    parse_solver_opt,
};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::output::{print_error, print_json};
use crate::{GlobalArgs, OutputFormat, exit};

#[derive(Debug, Subcommand)]
pub(crate) enum SolversCommand {
    /// List every solver plugin found on the search path.
    #[command(after_help = crate::help::SOLVERS_LIST)]
    List,
    /// Describe one solver: its options, defaults and library.
    #[command(after_help = crate::help::SOLVERS_INFO)]
    Info {
        /// The solver code, as given to --solver.
        code: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Load one plugin library and run the solver contract on synthetic
    /// challenges: present, present again, cleanup, cleanup again.
    #[command(after_help = crate::help::PLUGIN)]
    Check(CheckArgs),
    /// Create a new plugin crate that builds and passes `plugin check`.
    #[command(after_help = crate::help::PLUGIN_NEW)]
    New(crate::scaffold::NewArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The plugin library (.so).
    path: PathBuf,
    /// A plugin option, KEY=VALUE (repeatable).
    #[arg(long = "solver-opt", value_name = "KEY=VALUE")]
    solver_opts: Vec<String>,
    /// Refuse the library unless its SHA-256 is this (hex).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// The identifier used in the synthetic challenges.
    #[arg(long, default_value = "check.certsmith.test")]
    domain: String,
    /// Where http-01 tokens should be served [default: the plugin's first
    /// `listen` address, else http://127.0.0.1].
    #[arg(long, value_name = "URL")]
    http_base: Option<String>,
    /// For dns-01 plugins: a DNS server (IP[:PORT]) to ask for the zone
    /// (SOA) of the synthetic record, and whether the record is served after
    /// present and gone after cleanup.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_dns_server)]
    dns_server: Option<std::net::SocketAddr>,
    /// For dns-01 plugins: the zone to put in the request [default: found by
    /// SOA through --dns-server, else --domain].
    #[arg(long, value_name = "ZONE")]
    zone: Option<String>,
    /// Seconds each plugin call may take.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
}

fn parse_dns_server(s: &str) -> Result<std::net::SocketAddr, String> {
    certsmith_core::dns::parse_server(s)
        .ok_or_else(|| format!("'{s}' is not IP or IP:PORT (e.g. 127.0.0.1:53)"))
}

fn host_error_code(e: &PluginHostError) -> u8 {
    if e.is_usage() {
        exit::USAGE
    } else {
        exit::SOLVER
    }
}

fn search_path(global: &GlobalArgs) -> SearchPath {
    SearchPath::standard(&global.plugin_dirs, &[])
}

fn plugin_json(p: &LoadedPlugin) -> serde_json::Value {
    let m = p.manifest();
    json!({
        "code": m.code,
        "name": m.name,
        "version": m.version,
        "challenge_types": m.challenge_types,
        "path": p.path(),
        "abi_version": p.abi_version(),
        "sha256": p.sha256(),
    })
}

pub(crate) async fn run_solvers(global: &GlobalArgs, cmd: SolversCommand) -> u8 {
    let host = PluginHost::discover(&search_path(global));
    for problem in host.problems() {
        log::warn!("skipped {}: {}", problem.path.display(), problem.error);
    }
    for e in host.duplicate_errors() {
        log::warn!("{e}");
    }
    for (p, winner) in host.shadowed() {
        log::info!(
            "{} ('{}') is shadowed by {}",
            p.path().display(),
            p.manifest().code,
            winner.display()
        );
    }
    match cmd {
        SolversCommand::List => {
            let plugins: Vec<_> = host.plugins().collect();
            match global.output {
                OutputFormat::Json => print_json(&json!({
                    "solvers": plugins.iter().map(|p| plugin_json(p)).collect::<Vec<_>>(),
                    "searched": host.searched(),
                    "problems": host.problems().iter().map(|p| json!({
                        "path": p.path, "error": p.error.to_string()
                    })).collect::<Vec<_>>(),
                })),
                OutputFormat::Text => {
                    if plugins.is_empty() {
                        let dirs: Vec<String> = host
                            .searched()
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect();
                        crate::output::outln!("no solver plugins found in: {}", dirs.join(", "));
                    } else {
                        let rows: Vec<[String; 5]> = plugins
                            .iter()
                            .map(|p| {
                                let m = p.manifest();
                                let types: Vec<&str> =
                                    m.challenge_types.iter().map(|t| t.as_str()).collect();
                                [
                                    m.code.clone(),
                                    m.name.clone(),
                                    m.version.clone(),
                                    types.join(","),
                                    p.path().display().to_string(),
                                ]
                            })
                            .collect();
                        let header =
                            ["CODE", "NAME", "VERSION", "CHALLENGES", "FILE"].map(String::from);
                        let mut w = [0usize; 4];
                        for r in std::iter::once(&header).chain(rows.iter()) {
                            for (i, wi) in w.iter_mut().enumerate() {
                                *wi = (*wi).max(r[i].chars().count());
                            }
                        }
                        for r in std::iter::once(&header).chain(rows.iter()) {
                            crate::output::outln!(
                                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
                                r[0],
                                r[1],
                                r[2],
                                r[3],
                                r[4],
                                w0 = w[0],
                                w1 = w[1],
                                w2 = w[2],
                                w3 = w[3]
                            );
                        }
                    }
                    // Libraries that look like plugins but were refused,
                    // with why: a solver missing from the table is never
                    // a mystery.
                    for p in host.problems() {
                        crate::output::outln!("refused {}: {}", p.path.display(), p.error);
                    }
                }
            }
            exit::OK
        }
        SolversCommand::Info { code } => {
            let p = match host.get(&code) {
                Ok(p) => p,
                Err(e) => {
                    print_error(
                        &e.to_string(),
                        Some("`certsmith solvers list` shows what was found"),
                    );
                    return host_error_code(&e);
                }
            };
            let m = p.manifest();
            match global.output {
                OutputFormat::Json => {
                    let mut v = plugin_json(&p);
                    v["description"] = json!(m.description);
                    v["url"] = json!(m.url);
                    v["config"] = json!(
                        m.config
                            .iter()
                            .map(|(k, c)| {
                                let env_file = c.env.as_ref().map(|e| format!("{e}_FILE"));
                                (
                                    k.clone(),
                                    json!({
                                        "type": c.ty.as_str(),
                                        "required": c.required,
                                        "secret": c.secret,
                                        "env": c.env,
                                        "env_file": env_file,
                                        "default": c.default,
                                        "description": c.description,
                                    }),
                                )
                            })
                            .collect::<serde_json::Map<_, _>>()
                    );
                    v["defaults"] = json!(m.defaults);
                    v["in_process"] = json!(m.in_process);
                    print_json(&v);
                }
                OutputFormat::Text => {
                    println!("{} ({}) {}", m.name, m.code, m.version);
                    if !m.description.is_empty() {
                        println!("\n{}\n", m.description);
                    }
                    if let Some(url) = &m.url {
                        println!("docs:       {url}");
                    }
                    let types: Vec<&str> = m.challenge_types.iter().map(|t| t.as_str()).collect();
                    println!("challenges: {}", types.join(", "));
                    if m.in_process {
                        println!(
                            "lifetime:   its challenges live in the certsmith process that presents them and end with it (no cleanup journal entry, no name lock)"
                        );
                    }
                    println!("library:    {}", p.path().display());
                    println!("abi:        {}", p.abi_version());
                    println!("sha256:     {}", p.sha256());
                    println!(
                        "\noptions (--solver-opt KEY=VALUE, env, or [solvers.{}] in the config file):",
                        m.code
                    );
                    if m.config.is_empty() {
                        println!("  (none)");
                    }
                    for (k, c) in &m.config {
                        let mut flags = vec![c.ty.as_str().to_owned()];
                        if c.required {
                            flags.push("required".into());
                        }
                        if c.secret {
                            flags.push("secret".into());
                        }
                        if let Some(e) = &c.env {
                            flags.push(format!("env {e} or {e}_FILE"));
                        }
                        if let Some(d) = &c.default {
                            flags.push(format!("default {d}"));
                        }
                        println!("  {k:<18} {}", flags.join(", "));
                        if !c.description.is_empty() {
                            println!("  {:<18} {}", "", c.description);
                        }
                    }
                    let d = &m.defaults;
                    println!(
                        "\ndefaults: ttl {}s, propagation timeout {}s, polling interval {}s, max concurrency {}, call timeout {}s",
                        d.ttl,
                        d.propagation_timeout_s,
                        d.polling_interval_s,
                        d.max_concurrency,
                        d.call_timeout_s
                    );
                }
            }
            exit::OK
        }
    }
}

/// The steps `plugin check` prints before the contract run: the handshake
/// and the configuration.
const PRELUDE_STEPS: usize = 2;

pub(crate) async fn run_plugin(global: &GlobalArgs, cmd: PluginCommand) -> u8 {
    let args = match cmd {
        PluginCommand::Check(args) => args,
        PluginCommand::New(args) => return crate::scaffold::run(&args),
    };
    let mut policy = LoadPolicy::default();
    if let Some(pin) = &args.sha256 {
        policy
            .pins
            .insert(args.path.display().to_string(), pin.clone());
    }
    let json = global.output == OutputFormat::Json;
    let fail = |e: &PluginHostError| {
        if json {
            print_json(&json!({"path": args.path, "ok": false, "error": e.to_string()}));
        } else {
            print_error(&e.to_string(), None);
        }
        host_error_code(e)
    };
    let plugin = match PluginHost::load_file(&args.path, &policy) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let m = plugin.manifest();
    if !json {
        println!(
            "ok    handshake: {} '{}' {} (ABI {}), {}",
            m.name,
            m.code,
            m.version,
            plugin.abi_version(),
            plugin.path().display()
        );
    }
    let mut opts = Vec::new();
    for o in &args.solver_opts {
        match parse_solver_opt(o) {
            Ok(kv) => opts.push(kv),
            Err(e) => return fail(&e),
        }
    }
    let instance = match plugin.instantiate(&ConfigSources {
        cli: &opts,
        ..Default::default()
    }) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    if !json {
        println!("ok    configuration accepted, instance created");
    }
    let check = CheckOptions {
        domain: args.domain.clone(),
        http_base: args
            .http_base
            .clone()
            .unwrap_or_else(|| default_http_base(&instance)),
        call_timeout: Duration::from_secs(args.timeout),
        dns_server: args.dns_server,
        zone: args.zone.clone(),
    };
    let steps = run_checks(&instance, &check).await;
    let failed = steps.iter().filter(|s| !s.ok).count();
    // The handshake and the configuration were steps too: printed above
    // (or the check stopped there), they count in the total.
    let total = PRELUDE_STEPS + steps.len();
    if json {
        print_json(&json!({
            "path": plugin.path(),
            "plugin": plugin_json(&plugin),
            "ok": failed == 0,
            "steps": steps,
        }));
    } else {
        for s in &steps {
            let mark = if s.ok { "ok  " } else { "FAIL" };
            if s.detail.is_empty() {
                println!("{mark}  {}: {}", s.challenge_type, s.step);
            } else {
                println!("{mark}  {}: {} ({})", s.challenge_type, s.step, s.detail);
            }
        }
        if failed == 0 {
            println!("plugin check passed: {total} steps");
        } else {
            println!("plugin check FAILED: {failed} of {total} steps");
        }
    }
    if failed == 0 { exit::OK } else { exit::SOLVER }
}
