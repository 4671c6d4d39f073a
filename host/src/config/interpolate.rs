//! `${NAME}` and `${NAME:-default}` in string values, replaced from the environment before deserializing;
//! `${secretsmanager:…}` and `${ssm:…}` from the values [`super::secrets`] fetched.

use super::*;

pub(super) fn interpolate_table(
    table: &mut toml::Table,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        interpolate_value(value, &path, env)?;
    }
    Ok(())
}

pub(super) fn interpolate_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = interpolate(s, path, env)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => interpolate_table(t, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${NAME}` and `${NAME:-default}`; `$${` stays a literal `${`.
pub(super) fn interpolate(
    s: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                ConfigError::field(
                    path,
                    "unterminated `${`; write `${NAME}`, or `$${` for a literal `${`",
                )
            })?;
            let expr = &after[..end];
            if secrets::is_secret(expr) {
                // Resolved before interpolation (config::secrets); the value is never printed.
                let value = env(expr).ok_or_else(|| {
                    ConfigError::field(path, format!("`${{{expr}}}` could not be resolved"))
                })?;
                out.push_str(&value);
                rest = &after[end + 1..];
                continue;
            }
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ConfigError::field(
                    path,
                    format!(
                        "`${{{expr}}}` is not a valid environment variable reference; use letters, digits and `_`"
                    ),
                ));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(ConfigError::field(
                        path,
                        format!(
                            "environment variable `{name}` is not set; set it, or write `${{{name}:-default}}`"
                        ),
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
