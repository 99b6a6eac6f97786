//! Harness setup for the catalogue's cloud DNS solvers (`digitalocean`,
//! `hetzner`, `gcloud`, `azure`): one call starts a provider's stand-in,
//! mirrored into a pebble-challtestsrv, and says how certsmith reaches it
//! (the solver code, the credentials in the environment, the
//! `--solver-opt` values, wrong credentials for the refusal tests). The
//! end-to-end tests use it, and a benchmark can start the same rigs.

use std::path::PathBuf;

use crate::standin::{Answer, CloudOpts, Logged, StandIn};
use crate::{ChallTestSrv, HarnessError, azure, certsmith_bin, digitalocean, gcloud, hetzner};

/// A catalogue provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// DigitalOcean API v2.
    DigitalOcean,
    /// Hetzner DNS API.
    Hetzner,
    /// Google Cloud DNS v1.
    Gcloud,
    /// Azure DNS (Resource Manager).
    Azure,
}

impl Provider {
    /// All of them.
    pub const ALL: [Provider; 4] = [
        Provider::DigitalOcean,
        Provider::Hetzner,
        Provider::Gcloud,
        Provider::Azure,
    ];

    /// The solver code.
    pub fn code(self) -> &'static str {
        match self {
            Provider::DigitalOcean => "digitalocean",
            Provider::Hetzner => "hetzner",
            Provider::Gcloud => "gcloud",
            Provider::Azure => "azure",
        }
    }

    /// Every environment variable the solver reads (to clear them).
    pub fn env_vars(self) -> &'static [&'static str] {
        match self {
            Provider::DigitalOcean => &[
                "DO_AUTH_TOKEN",
                "DO_AUTH_TOKEN_FILE",
                "DO_API_URL",
                "DO_TTL",
            ],
            Provider::Hetzner => &[
                "HETZNER_API_KEY",
                "HETZNER_API_KEY_FILE",
                "HETZNER_API_URL",
                "HETZNER_TTL",
            ],
            Provider::Gcloud => &[
                "GCE_SERVICE_ACCOUNT",
                "GCE_SERVICE_ACCOUNT_FILE",
                "GCE_PROJECT",
                "GCE_ZONE_ID",
                "GCE_ALLOW_PRIVATE_ZONE",
                "GCE_TTL",
            ],
            Provider::Azure => &[
                "AZURE_TENANT_ID",
                "AZURE_CLIENT_ID",
                "AZURE_CLIENT_SECRET",
                "AZURE_CLIENT_SECRET_FILE",
                "AZURE_SUBSCRIPTION_ID",
                "AZURE_RESOURCE_GROUP",
                "AZURE_ZONE_NAME",
                "AZURE_AUTHORITY_HOST",
                "AZURE_TTL",
            ],
        }
    }

    /// The variable holding the secret credential (its `_FILE` form is
    /// read too).
    pub fn secret_var(self) -> &'static str {
        match self {
            Provider::DigitalOcean => "DO_AUTH_TOKEN",
            Provider::Hetzner => "HETZNER_API_KEY",
            Provider::Gcloud => "GCE_SERVICE_ACCOUNT",
            Provider::Azure => "AZURE_CLIENT_SECRET",
        }
    }
}

/// A started provider stand-in and how certsmith reaches it.
#[derive(Debug)]
pub struct Rig {
    /// The provider.
    pub provider: Provider,
    /// Its stand-in.
    pub standin: StandIn,
    /// Environment with valid credentials.
    pub env: Vec<(String, String)>,
    /// The same with the credential wrong.
    pub bad_env: Vec<(String, String)>,
    /// `--solver-opt` values (API base, token endpoint).
    pub opts: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

/// Starts `provider`'s stand-in hosting `opts.zones`.
pub fn start(provider: Provider, opts: CloudOpts) -> Result<Rig, HarnessError> {
    let dir = crate::temp_dir("certsmith-catalogue-")?;
    let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let rig = match provider {
        Provider::DigitalOcean => {
            let standin = digitalocean::start(opts)?;
            let opts = vec![s("api_base", &standin.url())];
            let secret = standin.secret();
            Rig {
                provider,
                env: vec![s("DO_AUTH_TOKEN", &secret)],
                bad_env: vec![s(
                    "DO_AUTH_TOKEN",
                    "dop_v1_0000000000000000000000000000000000000000000000000000000000000000",
                )],
                opts,
                standin,
                _dir: dir,
            }
        }
        Provider::Hetzner => {
            let standin = hetzner::start(opts)?;
            let opts = vec![s(
                "api_base",
                &format!("{}{}", standin.url(), hetzner::API_PREFIX),
            )];
            let secret = standin.secret();
            Rig {
                provider,
                env: vec![s("HETZNER_API_KEY", &secret)],
                bad_env: vec![s("HETZNER_API_KEY", "wrongwrongwrongwrongwrongwrong00")],
                opts,
                standin,
                _dir: dir,
            }
        }
        Provider::Gcloud => {
            // The stand-in needs the public key before it starts, the key
            // file the stand-in's address: the key is made first and its
            // token_uri filled in afterwards.
            let (placeholder, public) = gcloud::service_account_key("http://placeholder/token")?;
            let mut opts = opts;
            let zones = opts.zones.clone();
            for z in &zones {
                opts = opts.private_zone(z);
            }
            let standin = gcloud::start(opts, public)?;
            let token_uri = format!("{}/token", standin.url());
            let key = placeholder.replace("http://placeholder/token", &token_uri);
            let (other, _) = gcloud::service_account_key(&token_uri)?;
            let (good, bad) = (
                dir.path().join("sa.json"),
                dir.path().join("sa-rotated.json"),
            );
            let write = |p: &PathBuf, text: &str| {
                std::fs::write(p, text).map_err(|source| HarnessError::Io {
                    context: format!("writing {}", p.display()),
                    source,
                })
            };
            write(&good, &key)?;
            write(&bad, &other)?;
            Rig {
                provider,
                env: vec![s("GCE_SERVICE_ACCOUNT_FILE", &good.to_string_lossy())],
                bad_env: vec![s("GCE_SERVICE_ACCOUNT_FILE", &bad.to_string_lossy())],
                opts: vec![s(
                    "api_base",
                    &format!("{}{}", standin.url(), gcloud::API_PREFIX),
                )],
                standin,
                _dir: dir,
            }
        }
        Provider::Azure => {
            let standin = azure::start(opts)?;
            let secret = standin.secret();
            let common = vec![
                s("AZURE_TENANT_ID", azure::TENANT),
                s("AZURE_CLIENT_ID", azure::CLIENT_ID),
                s("AZURE_SUBSCRIPTION_ID", azure::SUBSCRIPTION),
                s("AZURE_RESOURCE_GROUP", azure::RESOURCE_GROUP),
            ];
            let mut env = common.clone();
            env.push(s("AZURE_CLIENT_SECRET", &secret));
            let mut bad_env = common;
            bad_env.push(s(
                "AZURE_CLIENT_SECRET",
                "Xyz8Q~wrongwrongwrongwrongwrongwrong0000",
            ));
            Rig {
                provider,
                env,
                bad_env,
                opts: vec![
                    s("api_base", &standin.url()),
                    s("authority", &standin.url()),
                ],
                standin,
                _dir: dir,
            }
        }
    };
    Ok(rig)
}

impl Rig {
    /// Makes the provider answer its rate-limit answer (a 1 s wait) to
    /// the next record call.
    pub fn rate_limit_next_record_call(&self) {
        let (part, answer): (&str, Answer) = match self.provider {
            Provider::DigitalOcean => ("/records", digitalocean::rate_limited(1)),
            Provider::Hetzner => ("/records", hetzner::rate_limited(1)),
            Provider::Gcloud => ("/rrsets", gcloud::rate_limited()),
            Provider::Azure => ("/TXT/", azure::rate_limited(1)),
        };
        self.standin.inject(part, answer);
    }

    /// Whether a request asked for a page after the first.
    pub fn paginated(&self) -> bool {
        let later = |r: &Logged| match self.provider {
            Provider::DigitalOcean | Provider::Hetzner => r.param("page").is_some_and(|p| p != "1"),
            Provider::Gcloud => r.param("pageToken").is_some(),
            Provider::Azure => false,
        };
        self.standin
            .requests()
            .iter()
            .any(|r| r.status == 200 && later(r))
    }

    /// The plugin library next to the certsmith binary.
    pub fn plugin_path(&self) -> PathBuf {
        let bin = certsmith_bin();
        bin.parent()
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(format!(
                "{}certsmith_{}{}",
                std::env::consts::DLL_PREFIX,
                self.provider.code(),
                std::env::consts::DLL_SUFFIX
            ))
    }

    /// Starts the rig with its records mirrored into `cts`.
    pub fn mirrored(
        provider: Provider,
        cts: &ChallTestSrv,
        zones: &[&str],
    ) -> Result<Rig, HarnessError> {
        start(
            provider,
            CloudOpts::default()
                .zones(zones)
                .max_per_page(1)
                .mirror_to(cts),
        )
    }
}
