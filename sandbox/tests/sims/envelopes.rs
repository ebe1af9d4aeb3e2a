//! Raw HTTP shapes both simulators share with the real APIs: error envelopes (including the
//! router's own 404/405), auth failures, rate-limit headers, pagination keys.

use serde_json::Value;

use crabglamp_testkit::cloud::*;

async fn call(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test]
async fn hetzner_envelopes_headers_and_pagination() {
    let sim = hetzner_sim(hz_config()).await;
    let http = reqwest::Client::new();
    let base = &sim.base_url;

    let (status, headers, body) = call(http.get(format!("{base}/servers")).bearer_auth(HZ_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(headers.contains_key(h), "{h} missing");
    }
    let p = &body["meta"]["pagination"];
    for key in ["page", "per_page", "previous_page", "next_page", "last_page", "total_entries"] {
        assert!(p.get(key).is_some(), "pagination.{key} missing: {p}");
    }
    assert!(p["previous_page"].is_null() && p["next_page"].is_null());

    let (status, _, body) = call(http.get(format!("{base}/servers"))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(body["error"].get("details").is_some(), "details present (null)");

    let (status, _, body) = call(http.get(format!("{base}/nothing-here")).bearer_auth(HZ_TOKEN)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _, body) = call(http.patch(format!("{base}/servers")).bearer_auth(HZ_TOKEN)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (405, Some("method_not_allowed")));
    let (status, _, body) = call(
        http.post(format!("{base}/servers"))
            .bearer_auth(HZ_TOKEN)
            .body("{not json")
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("json_error")));
    let (status, _, body) = call(http.get(format!("{base}/actions")).bearer_auth(HZ_TOKEN)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_input")), "listing all actions is gone");
    let (status, _, body) = call(http.get(format!("{base}/datacenters")).bearer_auth(HZ_TOKEN)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("deprecated_api_endpoint")));

    sim.control().rate_limit_storm(1);
    let (status, headers, body) = call(http.get(format!("{base}/servers")).bearer_auth(HZ_TOKEN)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));
    assert!(headers.contains_key("ratelimit-reset"));
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn cloudflare_envelopes_auth_and_pages() {
    let sim = cloudflare_sim(cf_config()).await;
    let http = reqwest::Client::new();
    let d = cf_config();
    let tunnels = format!("{}/accounts/{}/cfd_tunnel", sim.base_url, d.account_id);

    let (status, headers, body) = call(http.get(&tunnels).bearer_auth(CF_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["ratelimit"].to_str().unwrap().starts_with("\"default\";r="));
    assert!(headers["ratelimit-policy"].to_str().unwrap().starts_with("\"burst\";q=1200;w=300"));
    assert_eq!(body["success"], true);
    assert_eq!(body["messages"], Value::Array(vec![]), "messages stay empty");
    for key in ["page", "per_page", "count", "total_count", "total_pages"] {
        assert!(body["result_info"].get(key).is_some(), "result_info.{key} missing");
    }
    let (_, _, body) = call(http.get(format!("{tunnels}?page=9")).bearer_auth(CF_TOKEN)).await;
    assert_eq!(body["result"], Value::Array(vec![]), "pages past the end are empty");

    let (status, _, body) = call(http.get(&tunnels)).await;
    assert_eq!((status, body["errors"][0]["code"].as_i64()), (400, Some(9106)));
    assert_eq!((body["success"].as_bool(), body["result"].is_null()), (Some(false), true));
    let (status, _, body) = call(http.get(&tunnels).header("authorization", "Token abc")).await;
    assert_eq!((status, body["errors"][0]["code"].as_i64()), (400, Some(6003)));
    assert_eq!(body["errors"][0]["error_chain"][0]["code"], 6111);
    let (status, _, body) = call(http.get(&tunnels).bearer_auth("wrong")).await;
    assert_eq!((status, body["errors"][0]["code"].as_i64()), (401, Some(1000)));
    let (status, _, _) =
        call(http.get(&tunnels).header("x-auth-email", "ops@example.com").header("x-auth-key", CF_TOKEN)).await;
    assert_eq!(status, 200, "legacy global-key auth");
    let (status, _, body) =
        call(http.get(&tunnels).header("x-auth-email", "ops@example.com").header("x-auth-key", "nope")).await;
    assert_eq!((status, body["errors"][0]["code"].as_i64()), (403, Some(9103)));
    let other = format!("{}/accounts/other/cfd_tunnel", sim.base_url);
    let (status, _, body) = call(http.get(&other).bearer_auth(CF_TOKEN)).await;
    assert_eq!((status, body["errors"][0]["code"].as_i64()), (403, Some(10000)));
    let (status, _, _) = call(http.patch(&tunnels).bearer_auth(CF_TOKEN)).await;
    assert_eq!(status, 405);

    sim.control().rate_limit_storm(1);
    let (status, headers, body) = call(http.get(&tunnels).bearer_auth(CF_TOKEN)).await;
    assert_eq!((status, body["errors"][0]["code"].as_i64()), (429, Some(971)));
    assert!(headers.contains_key("retry-after"));
    sim.shutdown().await.unwrap();
}

/// Malformed or extreme requests get an answer in the provider's envelope, never a dropped
/// connection (a handler panic) or a 5xx, and the simulator keeps serving afterwards.
#[tokio::test]
async fn malformed_requests_never_crash_a_simulator() {
    let hz = hetzner_sim(hz_config()).await;
    let cf = cloudflare_sim(cf_config()).await;
    let http = reqwest::Client::new();
    let max = i64::MAX;
    let mut hz_cases = Vec::new();
    for path in ["/servers", "/firewalls", "/ssh_keys", "/servers/actions", "/locations", "/images"] {
        for q in [
            format!("page={max}"),
            format!("page={max}&per_page=50"),
            format!("page=2&per_page={max}"),
            "page=-1".to_owned(),
            "per_page=0".to_owned(),
            "sort=:desc".to_owned(),
            "sort=id:sideways".to_owned(),
            "label_selector=a%20in%20".to_owned(),
            "label_selector=((((".to_owned(),
            "label_selector=!".to_owned(),
        ] {
            hz_cases.push(("GET", format!("{path}?{q}"), String::new()));
        }
    }
    for body in ["[]", "null", "{\"name\": 7}", "{\"labels\": [1]}", "{\"rules\": {}}", "{\"apply_to\": [{}]}"] {
        for path in ["/servers", "/firewalls", "/ssh_keys", "/firewalls/1/actions/set_rules"] {
            hz_cases.push(("POST", path.to_owned(), body.to_owned()));
        }
        hz_cases.push(("PUT", "/servers/99999999999999999999".to_owned(), body.to_owned()));
    }
    hz_cases.push(("GET", format!("/actions?id={max}&id=-1"), String::new()));
    hz_cases.push(("POST", "/servers/1/actions/%ff".to_owned(), String::new()));
    let hz_base = hz.base_url.clone();
    let ids = cf_config();
    let mut cf_cases = Vec::new();
    for path in [format!("/accounts/{}/cfd_tunnel", ids.account_id), format!("/zones/{}/dns_records", ids.zone_id)] {
        for q in [
            format!("page={}", u64::MAX),
            format!("page={}&per_page=5000000", u64::MAX),
            "page=0".to_owned(),
            "per_page=-3".to_owned(),
            "is_deleted=maybe".to_owned(),
            "name.contains=%00".to_owned(),
        ] {
            cf_cases.push(("GET", format!("{path}?{q}"), String::new()));
        }
        for body in ["[]", "null", "{\"name\": 7}", "{\"tunnel_secret\": \"%%%\"}", "{\"ttl\": \"x\"}"] {
            cf_cases.push(("POST", path.clone(), body.to_owned()));
        }
    }
    for (sim_base, token, cases, hetzner) in
        [(&hz_base, HZ_TOKEN, &hz_cases, true), (&cf.base_url, CF_TOKEN, &cf_cases, false)]
    {
        for (method, path, body) in cases.iter() {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let req = http
                .request(method.clone(), format!("{sim_base}{path}"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.clone());
            let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path} {body}: no answer: {e}"));
            let status = resp.status().as_u16();
            let json = resp.json::<Value>().await.unwrap_or(Value::Null);
            assert!(status < 500, "{method} {path} {body}: {status} {json}");
            if status >= 400 {
                let envelope_ok = if hetzner {
                    json["error"]["code"].is_string()
                } else {
                    json["success"] == false && json["errors"][0]["code"].is_number()
                };
                assert!(envelope_ok, "{method} {path} {body}: {status} not in the envelope: {json}");
            }
        }
        let (status, _, _) = call(
            http.get(format!("{sim_base}/{}", if hetzner { "servers" } else { "user/tokens/verify" }))
                .bearer_auth(token),
        )
        .await;
        assert_eq!(status, 200, "still serving");
    }
    hz.shutdown().await.unwrap();
    cf.shutdown().await.unwrap();
}
