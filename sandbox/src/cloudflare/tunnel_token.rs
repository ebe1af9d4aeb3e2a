//! Tunnel tokens: what `cloudflared tunnel run --token` reads, and finding them in a
//! machine's user_data wherever cloud-init puts them. A token found is never rendered (not
//! even in `Debug`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value;

use crate::http::token_like_runs;

/// What `cloudflared tunnel run --token` reads: base64 of `{"a": account tag, "t": tunnel id,
/// "s": base64 secret}`.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelToken {
    pub account_tag: String,
    pub tunnel_id: String,
    /// Base64, as in the token (a credential).
    pub secret: String,
}

/// By hand so the secret never shows.
impl std::fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelToken")
            .field("account_tag", &self.account_tag)
            .field("tunnel_id", &self.tunnel_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TunnelToken {
    /// Parses one token; None unless it is base64 of a JSON object with string `a`, `t`, `s`.
    pub fn parse(text: &str) -> Option<TunnelToken> {
        let json: Value = serde_json::from_slice(&decode_base64(text)?).ok()?;
        let field = |k: &str| json.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned);
        Some(TunnelToken { account_tag: field("a")?, tunnel_id: field("t")?, secret: field("s")? })
    }
}

/// Standard or URL-safe base64, padded or not (cloudflared writes standard; people paste
/// either).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('.');
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(text).ok())
}

/// How deep [`find_tunnel_tokens`] looks into base64 that decodes to text (cloud-init's
/// `write_files` with `encoding: b64` holding a unit file that holds the token).
const NESTING: usize = 2;

/// Every tunnel token in `text`, in order: base64 runs starting `eyJ` (`{"`) that decode to a
/// token, also inside other base64 runs that decode to text.
pub fn find_tunnel_tokens(text: &str) -> Vec<TunnelToken> {
    let mut found = Vec::new();
    collect_tokens(text, NESTING, &mut found);
    found
}

fn collect_tokens(text: &str, depth: usize, found: &mut Vec<TunnelToken>) {
    for run in token_like_runs(text) {
        if let Some(token) = TunnelToken::parse(&text[run]) {
            found.push(token);
        }
    }
    if depth == 0 {
        return;
    }
    // Long base64 runs that are not tokens themselves may wrap a file that has one.
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    for run in text.split(|c: char| !is_b64(c)).filter(|r| r.len() >= 64 && !r.starts_with("eyJ")) {
        if let Some(inner) = decode_base64(run).and_then(|b| String::from_utf8(b).ok()) {
            collect_tokens(&inner, depth - 1, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(a: &str, t: &str, s: &str) -> String {
        STANDARD.encode(serde_json::json!({"a": a, "t": t, "s": s}).to_string())
    }

    #[test]
    fn tokens_are_found_wherever_cloud_init_puts_them() {
        let tok = token("acc", "6f1c0d9e-0000-4000-8000-000000000001", "c2VjcmV0");
        let plain = format!("#cloud-config\nruncmd:\n  - cloudflared service install {tok}\n");
        let found = find_tunnel_tokens(&plain);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].account_tag, "acc");
        assert_eq!(found[0].secret, "c2VjcmV0");
        // Quoted, then at the end of a sentence.
        assert_eq!(find_tunnel_tokens(&format!("TOKEN=\"{tok}\"")).len(), 1);
        assert_eq!(find_tunnel_tokens(&format!("the token is {tok}.")).len(), 1);
        // Inside a base64-encoded file.
        let unit = format!("[Service]\nExecStart=/usr/bin/cloudflared tunnel run --token {tok}\n");
        let b64 = format!("write_files:\n  - encoding: b64\n    content: {}\n", STANDARD.encode(unit));
        assert_eq!(find_tunnel_tokens(&b64).len(), 1);
    }

    #[test]
    fn non_tokens_are_ignored() {
        assert!(find_tunnel_tokens("#cloud-config\n{}\n").is_empty());
        let jwt_like = STANDARD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        assert!(find_tunnel_tokens(&jwt_like).is_empty(), "base64 JSON without a, t, s");
        assert!(find_tunnel_tokens(&token("acc", "t", "")).is_empty(), "an empty secret");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let parsed = TunnelToken::parse(&token("acc", "t", "dG9wLXNlY3JldA==")).expect("parses");
        assert!(!format!("{parsed:?}").contains("dG9wLXNlY3JldA"));
    }
}
