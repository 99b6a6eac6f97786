//! certsmith's `standalone` solver: answers http-01 and tls-alpn-01
//! challenges from listeners of its own.
//!
//! It exists for hosts with no web server on ports 80/443 (or one that can be
//! stopped for a minute): certsmith itself serves the challenge, so no
//! document root or DNS API is needed. The listeners open on the first
//! `present` of their challenge type and close after the last `cleanup`, so
//! the ports are held only while a validation is in flight.
//!
//! * `listen`: parsing and binding `listen` / `tls_listen`, with errors an
//!   operator can act on;
//! * `service`: the shared, lazily started, refcounted listener set;
//! * `http`: the minimal HTTP/1.1 responder for http-01;
//! * `tls`: the RFC 8737 certificates and TLS listener for tls-alpn-01.

use std::sync::Arc;

use certsmith_plugin_api::{
    ChallengeRequest, ChallengeType, PluginError, Presented, Solver, async_trait,
};
use serde::Deserialize;

mod http;
mod listen;
mod service;
mod tls;

use crate::listen::Setting;
use crate::service::Service;
use crate::tls::{Tls, TlsEntry};

const HTTP_SETTING: Setting = Setting {
    key: "listen",
    public_port: 80,
};

const TLS_SETTING: Setting = Setting {
    key: "tls_listen",
    public_port: 443,
};

/// The configuration (see `plugin.toml`). The host fills in the manifest's
/// defaults; the serde defaults repeat them for callers that do not.
#[derive(Clone, Debug, Deserialize)]
pub struct StandaloneConfig {
    /// Where the http-01 listener binds.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Where the tls-alpn-01 listener binds.
    #[serde(default = "default_tls_listen")]
    pub tls_listen: Vec<String>,
}

fn default_listen() -> Vec<String> {
    vec!["[::]:80".to_owned(), "0.0.0.0:80".to_owned()]
}

fn default_tls_listen() -> Vec<String> {
    vec!["[::]:443".to_owned(), "0.0.0.0:443".to_owned()]
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            listen: default_listen(),
            tls_listen: default_tls_listen(),
        }
    }
}

/// The solver: one http-01 and one tls-alpn-01 service, each shared by all
/// concurrent challenges of its type.
#[derive(Debug)]
pub struct Standalone {
    http: Service<Arc<str>>,
    tls: Service<TlsEntry>,
    certs: Tls,
    /// The TLS configuration, resolving certificates from `tls`'s entries.
    tls_config: Arc<rustls::ServerConfig>,
}

#[async_trait]
impl Solver for Standalone {
    type Config = StandaloneConfig;

    fn new(config: StandaloneConfig) -> Result<Self, PluginError> {
        let http_addrs = listen::parse(HTTP_SETTING, &config.listen)?;
        let tls_addrs = listen::parse(TLS_SETTING, &config.tls_listen)?;
        let tls = Service::new("tls-alpn-01", TLS_SETTING, tls_addrs);
        let certs = Tls::new();
        let tls_config = certs.server_config(tls.entries())?;
        Ok(Standalone {
            http: Service::new("http-01", HTTP_SETTING, http_addrs),
            tls,
            certs,
            tls_config,
        })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        match req.challenge_type {
            ChallengeType::Http01 => {
                let key_authorization: Arc<str> = Arc::from(req.key_authorization.as_str());
                self.http
                    .add(&req.token, key_authorization, http::spawn)
                    .await?;
            }
            ChallengeType::TlsAlpn01 => {
                // Made before taking the service lock: key generation is the
                // slow part and needs no shared state.
                let entry = self.certs.entry(&req.identifier, &req.key_authorization)?;
                let config = self.tls_config.clone();
                self.tls
                    .add(&req.token, entry, |listeners, _| {
                        tls::spawn(listeners, config)
                    })
                    .await?;
            }
            other => return Err(unsupported(other)),
        }
        certsmith_plugin_api::log::debug!(
            "{}: presented token {} for {}",
            req.challenge_type,
            req.token,
            req.identifier
        );
        Ok(Presented::default())
    }

    async fn cleanup(&self, req: &ChallengeRequest, _: &Presented) -> Result<(), PluginError> {
        match req.challenge_type {
            ChallengeType::Http01 => self.http.remove(&req.token).await,
            ChallengeType::TlsAlpn01 => self.tls.remove(&req.token).await,
            // Never presented, so nothing to remove.
            _ => {}
        }
        Ok(())
    }
}

fn unsupported(ty: ChallengeType) -> PluginError {
    PluginError::config(format!(
        "the standalone solver answers http-01 and tls-alpn-01, not {ty}; \
         pick a DNS solver for {ty}"
    ))
}

certsmith_plugin_api::export_solver!(Standalone, manifest = include_str!("../plugin.toml"));
