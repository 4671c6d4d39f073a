//! S3 event notifications as they arrive in an SQS queue: the objects they name.
//!
//! Three shapes, told apart by their fields:
//! - S3's own notification, `{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name"},
//!   "object": {"key", "size", "eTag", "versionId"}}}]}`, whose keys are URL-encoded (`+` for a space);
//! - the same inside an SNS notification, `{"Type": "Notification", "Message": "<the JSON above>"}`;
//! - EventBridge's `{"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {"name"},
//!   "object": {"key", "etag", "version-id"}}}`, whose keys are not encoded.
//!
//! S3's `s3:TestEvent` (sent when notifications are configured) and events other than object creation name
//! no object to read.

use serde_json::Value;

/// An object a notification names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// The bucket.
    pub bucket: String,
    /// The key, decoded.
    pub key: String,
    /// The version id, on a versioned bucket.
    pub version_id: Option<String>,
    /// The ETag, when the notification gives it.
    pub etag: Option<String>,
}

/// The objects created that a notification message names (none for a test event or other events).
pub fn parse(body: &[u8]) -> Result<Vec<ObjectRef>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the message is not JSON: {e}"))?;
    parse_value(&value, true)
}

fn parse_value(value: &Value, may_be_sns: bool) -> Result<Vec<ObjectRef>, String> {
    let text = |v: &Value, path: &str| -> Result<String, String> {
        v.pointer(path)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("`{path}` is missing"))
    };
    let optional = |v: &Value, path: &str| {
        v.pointer(path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && *s != "null")
            .map(str::to_string)
    };
    if may_be_sns && value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = text(value, "/Message")?;
        let inner: Value = serde_json::from_str(&inner)
            .map_err(|e| format!("the SNS notification's Message is not JSON: {e}"))?;
        return parse_value(&inner, false);
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if let Some(records) = value.get("Records").and_then(Value::as_array) {
        let mut out = Vec::new();
        for r in records {
            let event = r.get("eventName").and_then(Value::as_str).unwrap_or("");
            if !event.starts_with("ObjectCreated:") {
                continue;
            }
            out.push(ObjectRef {
                bucket: text(r, "/s3/bucket/name")?,
                key: url_decode(&text(r, "/s3/object/key")?)?,
                version_id: optional(r, "/s3/object/versionId"),
                etag: optional(r, "/s3/object/eTag"),
            });
        }
        return Ok(out);
    }
    if value.get("source").and_then(Value::as_str) == Some("aws.s3") {
        if value.get("detail-type").and_then(Value::as_str) != Some("Object Created") {
            return Ok(Vec::new());
        }
        return Ok(vec![ObjectRef {
            bucket: text(value, "/detail/bucket/name")?,
            key: text(value, "/detail/object/key")?,
            version_id: optional(value, "/detail/object/version-id"),
            etag: optional(value, "/detail/object/etag"),
        }]);
    }
    Err("neither an S3 event notification (`Records`), an SNS notification of one, nor an EventBridge S3 event".into())
}

/// Decodes a key as S3 notifications encode it (`application/x-www-form-urlencoded`: `+` is a space).
fn url_decode(key: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(key.len());
    let mut it = key.bytes();
    while let Some(b) = it.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [it.next(), it.next()];
                let [Some(h), Some(l)] = hex else {
                    return Err(format!("the key `{key}` has a cut `%` escape"));
                };
                let digit = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (digit(h), digit(l)) else {
                    return Err(format!("the key `{key}` has a bad `%` escape"));
                };
                bytes.push((h * 16 + l) as u8);
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("the key `{key}` does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S3_EVENT: &str = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"eu-west-1",
        "eventTime":"2026-12-06T10:00:00.000Z","eventName":"ObjectCreated:Put",
        "s3":{"s3SchemaVersion":"1.0","configurationId":"weir","bucket":{"name":"landing","arn":"arn:aws:s3:::landing"},
        "object":{"key":"orders/day+1/caf%C3%A9%2B.jsonl","size":1024,"eTag":"d41d8cd98f00b204e9800998ecf8427e",
        "versionId":"3HL4kqtJlcpXroDTDmJ","sequencer":"0055AED6DCD90281E5"}}},
        {"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"landing"},"object":{"key":"gone"}}}]}"#;

    #[test]
    fn s3_notifications_name_created_objects_with_decoded_keys() {
        let objects = parse(S3_EVENT.as_bytes()).unwrap();
        assert_eq!(
            objects,
            vec![ObjectRef {
                bucket: "landing".into(),
                key: "orders/day 1/café+.jsonl".into(),
                version_id: Some("3HL4kqtJlcpXroDTDmJ".into()),
                etag: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
            }]
        );
    }

    #[test]
    fn sns_wrapped_eventbridge_and_test_events() {
        let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:eu-west-1:1:t",
            "Message": S3_EVENT}).to_string();
        assert_eq!(parse(sns.as_bytes()).unwrap().len(), 1);
        let eb = r#"{"version":"0","id":"f5f1e65c","detail-type":"Object Created","source":"aws.s3",
            "detail":{"version":"0","bucket":{"name":"landing"},"object":{"key":"a b+c.csv","size":5,"etag":"e1"}}}"#;
        assert_eq!(
            parse(eb.as_bytes()).unwrap(),
            vec![ObjectRef {
                bucket: "landing".into(),
                key: "a b+c.csv".into(),
                version_id: None,
                etag: Some("e1".into())
            }]
        );
        let deleted = eb.replace("Object Created", "Object Deleted");
        assert!(parse(deleted.as_bytes()).unwrap().is_empty());
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-12-06T10:00:00.000Z","Bucket":"landing"}"#;
        assert!(parse(test.as_bytes()).unwrap().is_empty());
    }

    #[test]
    fn other_messages_are_refused() {
        assert!(parse(b"hello").is_err());
        assert!(parse(br#"{"order_id": 1}"#).is_err());
        assert!(parse(br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}"#).is_err());
    }
}
