//! Secrets in the configuration: `${secretsmanager:NAME}`, `${secretsmanager:NAME#key.path}` (a field of a
//! JSON secret) and `${ssm:/parameter/name}` (decrypted), resolved once at load with the `[aws]` settings and
//! substituted like environment variables. Values are never logged or printed; an error names the reference
//! and the field.

use std::collections::HashMap;

use super::*;

/// The secret references in a configuration's string values (comments do not count), each once.
pub(super) fn references(table: &toml::Table) -> Vec<String> {
    fn walk(value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(at) = rest.find("${") {
                    // `$${` is a literal.
                    let literal = at > 0 && rest.as_bytes()[at - 1] == b'$';
                    let after = &rest[at + 2..];
                    let Some(end) = after.find('}') else { break };
                    let expr = &after[..end];
                    if !literal && is_secret(expr) && !out.iter().any(|r| r == expr) {
                        out.push(expr.to_string());
                    }
                    rest = &after[end + 1..];
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    table.values().for_each(|v| walk(v, &mut out));
    out
}

/// Whether `${expr}` names a secret rather than an environment variable.
pub(super) fn is_secret(expr: &str) -> bool {
    expr.starts_with("secretsmanager:") || expr.starts_with("ssm:")
}

/// The values of `refs`, fetched with the `[aws]` settings of `table` (the configuration before
/// interpolation; its `[aws]` may use environment variables but no secrets).
pub(super) fn resolve(
    refs: &[String],
    table: &toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, ConfigError> {
    if refs.is_empty() {
        return Ok(HashMap::new());
    }
    let mut aws = table
        .get("aws")
        .cloned()
        .unwrap_or(toml::Value::Table(Default::default()));
    interpolate_value(&mut aws, "aws", env)?;
    let aws: crate::aws::AwsConfig = aws
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::field("aws", e.message().to_string()))?;
    fetch(refs, &aws)
}

#[cfg(feature = "secrets")]
fn fetch(
    refs: &[String],
    aws: &crate::aws::AwsConfig,
) -> Result<HashMap<String, String>, ConfigError> {
    // Loading runs inside the worker's runtime but is synchronous: the calls get a runtime of their own on
    // a helper thread (once, at start).
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        ConfigError::field("aws", format!("cannot start the AWS client: {e}"))
                    })?;
                rt.block_on(fetch_all(refs, aws))
            })
            .join()
            .unwrap_or_else(|_| Err(ConfigError::field("aws", "the secrets lookup panicked")))
    })
}

#[cfg(feature = "secrets")]
async fn fetch_all(
    refs: &[String],
    aws: &crate::aws::AwsConfig,
) -> Result<HashMap<String, String>, ConfigError> {
    let sdk = aws.load().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let mut out = HashMap::new();
    for r in refs {
        let fail = |why: String| {
            ConfigError::field(
                format!("${{{r}}}"),
                format!("{why}; check the name and that this worker's role may read it"),
            )
        };
        let value = if let Some(rest) = r.strip_prefix("secretsmanager:") {
            let (name, path) = match rest.split_once('#') {
                Some((n, p)) => (n, Some(p)),
                None => (rest, None),
            };
            let got = secrets
                .get_secret_value()
                .secret_id(name)
                .send()
                .await
                .map_err(|e| fail(crate::aws::sdk_error(&e)))?;
            let text = got
                .secret_string()
                .ok_or_else(|| fail("the secret has no text value (a binary secret)".into()))?;
            match path {
                None => text.to_string(),
                Some(path) => json_field(text, path).map_err(fail)?,
            }
        } else {
            let name = r.strip_prefix("ssm:").expect("a secret reference");
            let got = ssm
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| fail(crate::aws::sdk_error(&e)))?;
            got.parameter()
                .and_then(|p| p.value())
                .ok_or_else(|| fail("the parameter has no value".into()))?
                .to_string()
        };
        out.insert(r.clone(), value);
    }
    Ok(out)
}

#[cfg(not(feature = "secrets"))]
fn fetch(
    refs: &[String],
    _aws: &crate::aws::AwsConfig,
) -> Result<HashMap<String, String>, ConfigError> {
    Err(ConfigError::field(
        format!("${{{}}}", refs[0]),
        "secrets from AWS are not in this build of weir: rebuild with `cargo build --release --features secrets` \
         (or the default features)",
    ))
}

/// The text at `path` (`key` or `a.b.c`) of a JSON secret.
#[cfg_attr(
    not(feature = "secrets"),
    allow(dead_code, reason = "used with the secrets feature")
)]
fn json_field(text: &str, path: &str) -> Result<String, String> {
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| format!("the secret is not JSON, so it has no `{path}`"))?;
    for key in path.split('.') {
        value = value
            .get_mut(key)
            .map(serde_json::Value::take)
            .ok_or_else(|| format!("the secret's JSON has no `{path}`"))?;
    }
    Ok(match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_json_fields() {
        let text = "url = \"postgres://u:${secretsmanager:db#password}@h/d\"\nx = \"${HOME}\"\n\
                    # z = \"${ssm:/commented}\"\n\
                    [t]\ny = [\"${ssm:/weir/x}${secretsmanager:db#password}\", \"$${ssm:/literal}\"]";
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(
            references(&table),
            vec![
                "secretsmanager:db#password".to_string(),
                "ssm:/weir/x".to_string()
            ]
        );
        assert_eq!(json_field(r#"{"a":{"b":"c"},"n":5}"#, "a.b").unwrap(), "c");
        assert_eq!(json_field(r#"{"a":{"b":"c"},"n":5}"#, "n").unwrap(), "5");
        assert!(
            json_field(r#"{"a":1}"#, "b")
                .unwrap_err()
                .contains("no `b`")
        );
        assert!(json_field("plain", "b").unwrap_err().contains("not JSON"));
    }
}
