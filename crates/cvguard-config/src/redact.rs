//! What a printed config must not show: a URL's password and secret query parameters
//! (`?token=`), and librdkafka's secret properties. Token hashes and variable names
//! (`secret_env`) are no secrets.

/// Shown in place of a secret.
pub const REDACTED: &str = "***";

/// Query parameter names that carry a credential, matched within the name in any case
/// (`api_key`, `X-Amz-Signature`), and names that must match whole (`sig`).
const SECRET_PARAMS: &[&str] = &["token", "key", "secret", "pass", "signature", "auth", "credential"];
const SECRET_PARAMS_WHOLE: &[&str] = &["sig", "pwd"];

/// `url` with the password of its user info and the values of secret query parameters
/// replaced: `https://u:***@host/hook?token=***&team=soc`.
pub fn redact_url(url: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let (base, query) = match base.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (base, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &base[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{user}:{REDACTED}@{}", &base[..s], &base[at + 1..]),
                // A user alone may be a token (`https://TOKEN@host`).
                None => format!("{}://{REDACTED}@{}", &base[..s], &base[at + 1..]),
            }
        }
        _ => base.to_string(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if secret_param(name) => format!("{name}={REDACTED}"),
                _ => param.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s)) || SECRET_PARAMS_WHOLE.contains(&name.as_str())
}

/// Whether a librdkafka property's value is a secret: `sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`, `sasl.oauthbearer.client.secret`,
/// `ssl.key.pem`, `sasl.oauthbearer.config` and any JAAS text.
pub fn secret_kafka_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "key.pem", "jaas", "sasl.oauthbearer.config"]
        .iter()
        .any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    use super::{redact_url, secret_kafka_property};

    #[test]
    fn urls_lose_passwords_and_secret_parameters() {
        for (url, shown) in [
            (
                "postgres://cvguard:hunter2@db/cvguard",
                "postgres://cvguard:***@db/cvguard",
            ),
            (
                "https://hooks.example/x?token=abc&team=soc",
                "https://hooks.example/x?token=***&team=soc",
            ),
            (
                "https://h/x?api_key=1&X-Amz-Signature=2&sig=3&Password=4&page=2#top",
                "https://h/x?api_key=***&X-Amz-Signature=***&sig=***&Password=***&page=2#top",
            ),
            ("https://ghp_abc@h/x", "https://***@h/x"),
            ("sqlite://data/cvguard.db", "sqlite://data/cvguard.db"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn secret_properties() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
        ] {
            assert!(secret_kafka_property(name), "{name}");
        }
        for name in [
            "bootstrap.servers",
            "sasl.username",
            "sasl.mechanisms",
            "ssl.ca.location",
        ] {
            assert!(!secret_kafka_property(name), "{name}");
        }
    }
}
