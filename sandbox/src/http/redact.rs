//! What the request log keeps of a body: the one redaction function of the simulators, and the
//! token finder it shares with the cloudflared stand-in.

use serde_json::{Value, json};

/// What replaces a secret in a logged body.
const REDACTED: &str = "<redacted>";

/// Whether a JSON key names a secret wherever it appears (`tunnel_secret`, `token`,
/// `root_password`, `api_key`...).
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "token", "password", "passwd", "api_key", "apikey", "authorization", "credential", "private_key"]
        .iter()
        .any(|s| key.contains(s))
}

/// A request body as the request log keeps it: every value under a secret-looking key
/// replaced, `user_data` (cloud-init, which may carry a tunnel token) reduced to its size, and
/// token-like strings (base64 JSON such as cloudflared tokens and JWTs) cut out of every other
/// string. The one redaction function of the simulators.
pub fn redact_body(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k == "user_data" {
                        match v {
                            Value::String(s) => {
                                json!(format!("<{} bytes, read it at /_sim/servers/{{id}}/user_data>", s.len()))
                            }
                            Value::Null => Value::Null,
                            _ => json!(REDACTED),
                        }
                    } else if secret_key(&k) && !v.is_null() {
                        json!(REDACTED)
                    } else {
                        redact_body(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact_body).collect()),
        Value::String(s) => Value::String(redact_tokens(&s)),
        other => other,
    }
}

/// The shortest base64 run taken for a token: `{"a":"x"}` is already 12 characters.
const MIN_TOKEN_LEN: usize = 16;

/// Runs of base64 (standard or URL-safe) characters that start like base64 of a JSON object
/// (`eyJ` = `{"`): cloudflared tunnel tokens and JWTs look like this. Returned as byte ranges
/// of `text`.
pub fn token_like_runs(text: &str) -> Vec<std::ops::Range<usize>> {
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'.');
    let bytes = text.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_b64(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_b64(bytes[i]) {
            i += 1;
        }
        // A token starts at a non-base64 boundary, so `xeyJ...` is not mistaken for one, or
        // right after the `=` of an assignment (`TUNNEL_TOKEN=eyJ...` in an environment file).
        let begins =
            (start..i).find(|&p| text[p..i].starts_with("eyJ") && (p == start || (bytes[p - 1] == b'=' && p + 1 < i)));
        if let Some(p) = begins.filter(|&p| i - p >= MIN_TOKEN_LEN) {
            runs.push(p..i);
        }
    }
    runs
}

fn redact_tokens(text: &str) -> String {
    let runs = token_like_runs(text);
    if runs.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for run in runs {
        out.push_str(&text[last..run.start]);
        out.push_str(REDACTED);
        last = run.end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn logged_bodies_keep_no_secret() {
        let token = "eyJhIjoiYWNjIiwidCI6InR1bm5lbCIsInMiOiJjMlZqY21WMCJ9";
        let body = json!({
            "name": "web-1",
            "tunnel_secret": "c2VjcmV0c2VjcmV0",
            "user_data": format!("#cloud-config\nruncmd: [cloudflared service install {token}]"),
            "nested": [{"api_token": "t0k", "root_password": "pw", "public_key": "ssh-ed25519 AAAA"}],
            "comment": format!("token {token} inside"),
            "none": null,
        });
        let logged = super::redact_body(body).to_string();
        for secret in ["c2VjcmV0c2VjcmV0", token, "t0k", "\"pw\"", "cloud-config"] {
            assert!(!logged.contains(secret), "{secret} in {logged}");
        }
        for kept in ["web-1", "ssh-ed25519 AAAA", "token <redacted> inside", "\"none\":null"] {
            assert!(logged.contains(kept), "{kept} missing in {logged}");
        }
    }

    #[test]
    fn token_runs_start_at_a_boundary() {
        assert_eq!(super::token_like_runs("x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.c2ln y"), vec![2..40]);
        assert!(super::token_like_runs("xeyJhbGciOiJIUzI1NiJ9").is_empty(), "not at a boundary");
        assert!(super::token_like_runs("eyJhYg").is_empty(), "too short to be a token");
        let env = "TUNNEL_TOKEN=eyJhIjoiYWNjIiwidCI6InR1bm5lbCJ9";
        assert_eq!(super::token_like_runs(env), vec![13..env.len()], "after an assignment's =");
    }
}
