//! Idle traffic counted in whole list cycles. The refresher lists again one resync period after
//! its last list ended, so a cycle is the period plus the list's own duration; a window of a
//! fixed length can hold one list more or less than its length suggests. Counting from the
//! start of one server list to the start of a later one counts every cycle whole.

use crabglamp_sandbox::http::RequestRecord;

/// Hetzner traffic between the first and the last server-list start of an idle window.
#[derive(Debug, PartialEq)]
pub struct IdleCycles {
    /// Whole cycles between the first and the last start.
    pub cycles: usize,
    /// Requests of every kind sent during those cycles.
    pub requests: usize,
    /// Of them, the firewall-list pages (the rule audit, once per so many resyncs).
    pub firewall_pages: usize,
    /// Their span, in wall-clock seconds.
    pub wall_secs: f64,
}

/// Whether a request is the first page of the server list (the start of a cycle).
fn starts_server_list(r: &RequestRecord) -> bool {
    if r.method.as_str() != "GET" || r.route.as_deref() != Some("/v1/servers") {
        return false;
    }
    let page =
        r.query.as_deref().unwrap_or_default().split('&').find_map(|pair| pair.strip_prefix("page=")).unwrap_or("1");
    page == "1"
}

fn seconds(at: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(at).ok().map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// The whole cycles in some requests, oldest first; `None` with fewer than two starts.
pub fn hetzner_cycles(records: &[RequestRecord]) -> Option<IdleCycles> {
    let starts: Vec<usize> =
        records.iter().enumerate().filter(|(_, r)| starts_server_list(r)).map(|(i, _)| i).collect();
    let (&first, &last) = (starts.first()?, starts.last()?);
    if first == last {
        return None;
    }
    let wall_secs = seconds(&records[last].at)? - seconds(&records[first].at)?;
    let firewall_pages = records[first..last]
        .iter()
        .filter(|r| r.method.as_str() == "GET" && r.route.as_deref() == Some("/v1/firewalls"))
        .count();
    Some(IdleCycles { cycles: starts.len() - 1, requests: last - first, firewall_pages, wall_secs })
}
