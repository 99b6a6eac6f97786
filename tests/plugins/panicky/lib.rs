//! Test plugin: panics in `present`, `cleanup` or `new` on request, and can
//! sleep past its deadline, so the tests can show that the SDK turns panics
//! into errors and enforces deadlines, and that the host keeps working.

use certsmith_plugin_api::{ChallengeRequest, PluginError, Presented, Solver, async_trait};

#[derive(serde::Deserialize)]
struct Config {
    panic_in: String,
    sleep_ms: u64,
    token: String,
    leak_secret: bool,
    #[serde(default)]
    cancel_marker: Option<String>,
}

/// Writes the marker file when dropped before `done` is set: the SDK drops
/// an operation's future when the host cancels it.
struct CancelMarker {
    path: Option<String>,
    done: bool,
}

impl Drop for CancelMarker {
    fn drop(&mut self) {
        if let (false, Some(p)) = (self.done, &self.path) {
            let _ = std::fs::write(p, "cancelled");
        }
    }
}

struct Panicky {
    config: Config,
}

#[async_trait]
impl Solver for Panicky {
    type Config = Config;

    fn new(config: Config) -> Result<Self, PluginError> {
        if config.panic_in == "new" {
            panic!("deliberate panic in new");
        }
        Ok(Panicky { config })
    }

    async fn present(&self, req: &ChallengeRequest) -> Result<Presented, PluginError> {
        certsmith_plugin_api::log::info!("presenting {}", req.identifier);
        if self.config.leak_secret {
            certsmith_plugin_api::log::warn!("careless log line with token {}", self.config.token);
            return Err(PluginError::auth(format!(
                "the API rejected token {}",
                self.config.token
            )));
        }
        let mut marker = CancelMarker {
            path: self.config.cancel_marker.clone(),
            done: false,
        };
        if self.config.sleep_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.config.sleep_ms)).await;
        }
        marker.done = true;
        if self.config.panic_in == "present" {
            panic!("deliberate panic in present for {}", req.identifier);
        }
        Ok(Presented::new(serde_json::json!({"token": req.token})))
    }

    async fn cleanup(&self, _: &ChallengeRequest, _: &Presented) -> Result<(), PluginError> {
        if self.config.panic_in == "cleanup" {
            panic!("deliberate panic in cleanup");
        }
        Ok(())
    }
}

certsmith_plugin_api::export_solver!(Panicky, manifest = include_str!("plugin.toml"));
