//! The read-only Hetzner catalog the simulator serves: locations, server types with
//! per-location availability and prices, and system images per architecture. Static data
//! shaped like the real API's (2026 line-up); nothing here changes at run time.
//!
//! Numbers are typed as the API types them, because strict decoders (hcloud-go's `int`
//! fields, serde's `i64`) refuse `40.0` where an integer belongs: ids, `cores`, `disk`,
//! `included_traffic` and `primary_disk_size` render as integers; the API's `number` fields
//! (`memory`, `disk_size`, `image_size`, latitude and longitude) as floats, `4.0` as Hetzner
//! prints them; prices as decimal strings.

use serde_json::{Value, json};

pub struct Location {
    pub id: i64,
    pub name: &'static str,
    pub description: &'static str,
    pub country: &'static str,
    pub city: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub network_zone: &'static str,
}

pub const LOCATIONS: &[Location] = &[
    Location {
        id: 1,
        name: "fsn1",
        description: "Falkenstein DC Park 1",
        country: "DE",
        city: "Falkenstein",
        latitude: 50.47612,
        longitude: 12.370071,
        network_zone: "eu-central",
    },
    Location {
        id: 2,
        name: "nbg1",
        description: "Nuremberg DC Park 1",
        country: "DE",
        city: "Nuremberg",
        latitude: 49.452102,
        longitude: 11.076665,
        network_zone: "eu-central",
    },
    Location {
        id: 3,
        name: "hel1",
        description: "Helsinki DC Park 1",
        country: "FI",
        city: "Helsinki",
        latitude: 60.169855,
        longitude: 24.938379,
        network_zone: "eu-central",
    },
    Location {
        id: 4,
        name: "ash",
        description: "Ashburn, VA",
        country: "US",
        city: "Ashburn, VA",
        latitude: 39.045821,
        longitude: -77.487073,
        network_zone: "us-east",
    },
    Location {
        id: 5,
        name: "hil",
        description: "Hillsboro, OR",
        country: "US",
        city: "Hillsboro, OR",
        latitude: 45.54222,
        longitude: -122.951924,
        network_zone: "us-west",
    },
    Location {
        id: 6,
        name: "sin",
        description: "Singapore",
        country: "SG",
        city: "Singapore",
        latitude: 1.283333,
        longitude: 103.833333,
        network_zone: "ap-southeast",
    },
];

/// Where a server type can be ordered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every location.
    All,
    /// EU locations only (fsn1, nbg1, hel1).
    Eu,
    /// Nowhere any more (deprecated, kept listable like the real API does).
    Nowhere,
}

pub struct ServerType {
    pub id: i64,
    pub name: &'static str,
    /// Typed as the API types them: `cores` and `disk` (GB) are integers (hcloud-go decodes
    /// them into `int`, which refuses `40.0`), `memory` (GB) a float (`float32` there).
    pub cores: i32,
    pub memory: f64,
    pub disk: i64,
    pub dedicated: bool,
    pub arm: bool,
    pub category: &'static str,
    pub reach: Reach,
    /// Net monthly price in EUR in the EU; other regions cost 20% more.
    pub monthly_eur: f64,
}

/// One row of the static table below; positional so the table reads like the price list.
#[allow(clippy::too_many_arguments)]
const fn st(
    id: i64,
    name: &'static str,
    cores: i32,
    memory: f64,
    disk: i64,
    dedicated: bool,
    arm: bool,
    category: &'static str,
    reach: Reach,
    monthly_eur: f64,
) -> ServerType {
    ServerType { id, name, cores, memory, disk, dedicated, arm, category, reach, monthly_eur }
}

pub const SERVER_TYPES: &[ServerType] = &[
    st(22, "cx22", 2, 4.0, 40, false, false, "cost_optimized", Reach::Nowhere, 3.79),
    st(101, "cx23", 2, 4.0, 40, false, false, "cost_optimized", Reach::Eu, 3.49),
    st(102, "cx33", 4, 8.0, 80, false, false, "cost_optimized", Reach::Eu, 5.49),
    st(103, "cx43", 8, 16.0, 160, false, false, "cost_optimized", Reach::Eu, 9.49),
    st(104, "cx53", 16, 32.0, 320, false, false, "cost_optimized", Reach::Eu, 17.49),
    st(11, "cpx11", 2, 2.0, 40, false, false, "regular_purpose", Reach::Nowhere, 4.35),
    st(111, "cpx12", 1, 2.0, 40, false, false, "regular_purpose", Reach::All, 4.99),
    st(112, "cpx22", 2, 4.0, 80, false, false, "regular_purpose", Reach::All, 7.99),
    st(113, "cpx32", 4, 8.0, 160, false, false, "regular_purpose", Reach::All, 13.99),
    st(114, "cpx42", 8, 16.0, 320, false, false, "regular_purpose", Reach::All, 25.49),
    st(115, "cpx52", 12, 24.0, 480, false, false, "regular_purpose", Reach::All, 36.49),
    st(116, "cpx62", 16, 32.0, 640, false, false, "regular_purpose", Reach::All, 49.99),
    st(45, "cax11", 2, 4.0, 40, false, true, "cost_optimized", Reach::Eu, 3.79),
    st(93, "cax21", 4, 8.0, 80, false, true, "cost_optimized", Reach::Eu, 6.49),
    st(94, "cax31", 8, 16.0, 160, false, true, "cost_optimized", Reach::Eu, 12.49),
    st(95, "cax41", 16, 32.0, 320, false, true, "cost_optimized", Reach::Eu, 24.49),
    st(96, "ccx13", 2, 8.0, 80, true, false, "general_purpose", Reach::All, 12.49),
    st(97, "ccx23", 4, 16.0, 160, true, false, "general_purpose", Reach::All, 24.49),
    st(98, "ccx33", 8, 32.0, 240, true, false, "general_purpose", Reach::All, 48.49),
];

impl ServerType {
    pub fn architecture(&self) -> &'static str {
        if self.arm { "arm" } else { "x86" }
    }

    pub fn available_in(&self, location: &str) -> bool {
        match self.reach {
            Reach::All => true,
            Reach::Eu => matches!(location, "fsn1" | "nbg1" | "hel1"),
            Reach::Nowhere => false,
        }
    }

    fn listed_in(&self, location: &str) -> bool {
        self.reach == Reach::Nowhere || self.available_in(location)
    }
}

pub struct Image {
    pub id: i64,
    pub name: &'static str,
    pub description: &'static str,
    pub os_flavor: &'static str,
    pub os_version: &'static str,
    pub arm: bool,
}

pub const IMAGES: &[Image] = &[
    Image {
        id: 161547269,
        name: "ubuntu-24.04",
        description: "Ubuntu 24.04",
        os_flavor: "ubuntu",
        os_version: "24.04",
        arm: false,
    },
    Image {
        id: 161547270,
        name: "ubuntu-24.04",
        description: "Ubuntu 24.04",
        os_flavor: "ubuntu",
        os_version: "24.04",
        arm: true,
    },
    Image {
        id: 67794396,
        name: "ubuntu-22.04",
        description: "Ubuntu 22.04",
        os_flavor: "ubuntu",
        os_version: "22.04",
        arm: false,
    },
    Image {
        id: 103908070,
        name: "ubuntu-22.04",
        description: "Ubuntu 22.04",
        os_flavor: "ubuntu",
        os_version: "22.04",
        arm: true,
    },
    Image {
        id: 114690387,
        name: "debian-12",
        description: "Debian 12",
        os_flavor: "debian",
        os_version: "12",
        arm: false,
    },
    Image {
        id: 114690389,
        name: "debian-12",
        description: "Debian 12",
        os_flavor: "debian",
        os_version: "12",
        arm: true,
    },
    Image {
        id: 202151510,
        name: "debian-13",
        description: "Debian 13",
        os_flavor: "debian",
        os_version: "13",
        arm: false,
    },
    Image {
        id: 202151511,
        name: "debian-13",
        description: "Debian 13",
        os_flavor: "debian",
        os_version: "13",
        arm: true,
    },
];

impl Image {
    pub fn architecture(&self) -> &'static str {
        if self.arm { "arm" } else { "x86" }
    }
}

/// Finds by id (JSON number or numeric string) or by name.
fn by_id_or_name<'a, T>(
    items: &'a [T],
    key: &Value,
    id: impl Fn(&T) -> i64,
    name: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    match key {
        Value::Number(n) => n.as_i64().and_then(|n| items.iter().find(|i| id(i) == n)),
        Value::String(s) => match s.parse::<i64>() {
            Ok(n) => items.iter().find(|i| id(i) == n),
            Err(_) => items.iter().find(|i| name(i) == s),
        },
        _ => None,
    }
}

pub fn find_location(key: &Value) -> Option<&'static Location> {
    by_id_or_name(LOCATIONS, key, |l| l.id, |l| l.name)
}

pub fn find_server_type(key: &Value) -> Option<&'static ServerType> {
    by_id_or_name(SERVER_TYPES, key, |t| t.id, |t| t.name)
}

/// An image by id, or by name for the architecture the server type needs.
pub fn find_image(key: &Value, arm: bool) -> Option<&'static Image> {
    match key {
        Value::String(s) if s.parse::<i64>().is_err() => IMAGES.iter().find(|i| i.name == s && i.arm == arm),
        _ => by_id_or_name(IMAGES, key, |i| i.id, |i| i.name),
    }
}

pub fn image_by_id(id: i64) -> Option<&'static Image> {
    IMAGES.iter().find(|i| i.id == id)
}

pub fn location_json(l: &Location) -> Value {
    json!({
        "id": l.id, "name": l.name, "description": l.description, "country": l.country,
        "city": l.city, "latitude": l.latitude, "longitude": l.longitude,
        "network_zone": l.network_zone,
    })
}

/// A price as Hetzner renders it: decimal strings, the net amount with 10 decimals and the
/// gross (19% German VAT) with 16 (`"4.9900000000"`, `"5.9381000000000000"`), computed in
/// integer units of 1e-12 EUR so no binary float noise reaches the digits.
fn price(net: f64) -> Value {
    let net_e10 = (net * 1e10).round() as i64;
    let gross_e12 = net_e10 * 119;
    json!({
        "net": format!("{}.{:010}", net_e10 / 10_000_000_000, net_e10 % 10_000_000_000),
        "gross": format!("{}.{:012}0000", gross_e12 / 1_000_000_000_000, gross_e12 % 1_000_000_000_000),
    })
}

/// Traffic included per month, in bytes (an integer: hcloud-go decodes it as `uint64`):
/// 20 TB in the EU, 1 TB in the US and Singapore.
pub fn included_traffic(l: &Location) -> i64 {
    if l.network_zone == "eu-central" { 21_990_232_555_520 } else { 1_099_511_627_776 }
}

pub fn server_type_json(t: &ServerType) -> Value {
    let prices: Vec<Value> = LOCATIONS
        .iter()
        .filter(|l| t.listed_in(l.name))
        .map(|l| {
            let monthly = if l.network_zone == "eu-central" { t.monthly_eur } else { t.monthly_eur * 1.2 };
            json!({
                "location": l.name,
                "price_hourly": price(monthly / 730.0),
                "price_monthly": price(monthly),
                "included_traffic": included_traffic(l),
                "price_per_tb_traffic": price(1.0),
            })
        })
        .collect();
    let deprecation = if t.reach == Reach::Nowhere {
        json!({"announced": "2025-09-16T00:00:00+00:00", "unavailable_after": "2025-10-16T00:00:00+00:00"})
    } else {
        Value::Null
    };
    let locations: Vec<Value> = LOCATIONS
        .iter()
        .filter(|l| t.listed_in(l.name))
        .map(|l| {
            json!({
                "id": l.id, "name": l.name, "deprecation": deprecation,
                "available": t.available_in(l.name), "recommended": t.available_in(l.name),
            })
        })
        .collect();
    json!({
        "id": t.id, "name": t.name, "description": t.name.to_uppercase(), "cores": t.cores,
        "memory": t.memory, "disk": t.disk, "deprecated": t.reach == Reach::Nowhere,
        "deprecation": deprecation, "prices": prices, "storage_type": "local",
        "cpu_type": if t.dedicated { "dedicated" } else { "shared" },
        "category": t.category, "architecture": t.architecture(), "locations": locations,
    })
}

pub fn image_json(i: &Image) -> Value {
    json!({
        "id": i.id, "type": "system", "status": "available", "name": i.name,
        "description": i.description, "image_size": null, "disk_size": 5.0, "created":
        "2024-04-25T00:00:00+00:00", "created_from": null, "bound_to": null,
        "os_flavor": i.os_flavor, "os_version": i.os_version, "rapid_deploy": true,
        "protection": {"delete": false}, "deprecated": null, "deleted": null, "labels": {},
        "architecture": i.architecture(),
    })
}
