pub mod backtest;
pub mod check_config;
pub mod demo;
pub mod incidents;
pub mod man;
pub mod replay;
pub mod serve;
pub mod simulate;
pub mod text;
pub mod token;
pub mod tune;

use cvguard_config::Config;
use cvguard_core::ConfigIssue;

/// The suspend webhook's settings, with its secret from the environment; `None` without
/// a URL. A URL without its secret is a config error naming `suspend.secret_env`.
pub fn suspend_settings(config: &Config) -> Result<Option<cvguard_respond::suspend::SuspendSettings>, crate::Failure> {
    let Some(url) = &config.suspend.url else {
        return Ok(None);
    };
    let secret = std::env::var(&config.suspend.secret_env).unwrap_or_default();
    if secret.is_empty() {
        return Err(crate::Failure::Config(cvguard_config::ConfigError {
            file: config.source_name.clone(),
            issues: vec![ConfigIssue {
                rule: None,
                key: "suspend.secret_env".into(),
                message: format!(
                    "[suspend] url is set, but the environment variable {} holding the HMAC key is empty or unset",
                    config.suspend.secret_env
                ),
            }],
        }));
    }
    Ok(Some(cvguard_respond::suspend::SuspendSettings {
        url: url.clone(),
        secret: secret.into_bytes(),
        timeout: config.timing.suspend_timeout,
        max_attempts: config.suspend.max_attempts,
    }))
}
