#!/usr/bin/env python3
"""Drive the Hetzner and Cloudflare simulators with the OFFICIAL Python clients, unchanged.

Usage: check-sims-python.py --hetzner-url URL --hetzner-token T
                            --cloudflare-url URL --cloudflare-token T
                            --account-id A --zone-id Z --zone-name example.com
Needs `pip install hcloud cloudflare`. Exits non-zero on the first failure.
"""

import argparse
import base64
import json
import sys
import time

import cloudflare
import hcloud
import requests
from hcloud import Client
from hcloud.firewalls import FirewallResource, FirewallRule
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType


def step(msg):
    print(f"ok: {msg}", flush=True)


def check_hetzner(url, token):
    client = Client(token=token, api_endpoint=url, poll_interval=0.2)

    # Catalog: the operator refuses types a region does not offer.
    hel1 = client.locations.get_by_name("hel1")
    assert hel1 is not None and hel1.network_zone == "eu-central", hel1
    assert client.locations.get_by_name("hil") is not None
    st = client.server_types.get_by_name("cpx22")
    assert any(p["location"] == "hil" for p in st.prices), st.prices
    # Numbers typed as the API types them (JSON 80 is an int, 80.0 a float, to Python too).
    assert (type(st.cores), type(st.memory), type(st.disk)) == (int, float, int), (st.cores, st.memory, st.disk)
    assert all(isinstance(p["price_hourly"]["net"], str) and isinstance(p["included_traffic"], int)
               for p in st.prices), st.prices
    assert client.images.get_by_name_and_architecture("ubuntu-24.04", "x86") is not None
    try:
        client.datacenters.get_all()
        raise AssertionError("datacenters still served")
    except hcloud.APIException as e:
        assert e.code == "deprecated_api_endpoint", e.code
    step("catalog: locations, server types, images; datacenters gone (410)")

    labels = {"crabglamp.com/kind": "plainvm", "crabglamp.com/uid": "abc-123"}
    created = client.servers.create(
        name="py-check-1",
        server_type=ServerType(name="cpx22"),
        image=Image(name="ubuntu-24.04"),
        location=Location(name="hel1"),
        labels=labels,
        user_data="#cloud-config\n{}\n",
    )
    server = created.server
    assert server.status in ("initializing", "starting"), server.status
    assert created.root_password, "no ssh keys: a root password is expected"
    created.action.wait_until_finished()
    for a in created.next_actions:
        a.wait_until_finished()
    server = client.servers.get_by_name("py-check-1")
    assert server.status == "running", server.status
    assert server.location.name == "hel1"
    assert server.labels == labels
    assert (type(server.primary_disk_size), type(server.included_traffic)) == (int, int), server.primary_disk_size
    step(f"server {server.id} created in hel1 and running")

    try:
        client.servers.create(name="py-check-1", server_type=ServerType(name="cpx22"),
                              image=Image(name="ubuntu-24.04"), location=Location(name="hel1"))
        raise AssertionError("duplicate name accepted")
    except hcloud.APIException as e:
        assert e.code == "uniqueness_error", e.code
    step("duplicate name refused with uniqueness_error")

    try:
        client.servers.create(name="py-check-2", server_type=ServerType(name="cx23"),
                              image=Image(name="ubuntu-24.04"), location=Location(name="hil"))
        raise AssertionError("cx23 in hil accepted")
    except hcloud.APIException as e:
        assert e.code == "invalid_input", e.code
    step("cx23 in hil refused")

    found = client.servers.get_all(label_selector="crabglamp.com/kind=plainvm,crabglamp.com/uid")
    assert [s.id for s in found] == [server.id], found
    assert client.servers.get_all(label_selector="crabglamp.com/kind!=plainvm") == []
    assert len(client.servers.get_all(label_selector="crabglamp.com/kind in (agent,plainvm)")) == 1
    step("listed by label selector")

    server.power_off().wait_until_finished()
    assert client.servers.get_by_id(server.id).status == "off"
    server.change_type(ServerType(name="cpx32"), upgrade_disk=True).wait_until_finished()
    retyped = client.servers.get_by_id(server.id)
    assert (retyped.server_type.name, retyped.primary_disk_size) == ("cpx32", 160), retyped.primary_disk_size
    rebuilt = server.rebuild(Image(name="debian-12"), user_data="#cloud-config\n")
    assert rebuilt.root_password, "created without SSH keys: a new root password"
    rebuilt.action.wait_until_finished()
    assert client.servers.get_by_id(server.id).image.name == "debian-12"
    server.power_on().wait_until_finished()
    assert client.servers.get_by_id(server.id).status == "running"
    server.reboot().wait_until_finished()
    server.shutdown().wait_until_finished()
    assert client.servers.get_by_id(server.id).status == "off"
    server.power_on().wait_until_finished()
    server.update(labels={**labels, "extra": "yes"})
    assert client.servers.get_by_id(server.id).labels["extra"] == "yes"
    assert any(a.command == "stop_server" for a in server.get_actions())
    step("powered off, retyped, rebuilt, on, rebooted, shut down, relabelled")

    fw_resp = client.firewalls.create(
        name="py-check-fw",
        labels={"crabglamp.com/kind": "plainvm"},
        rules=[FirewallRule(direction="in", protocol="tcp", port="22",
                            source_ips=["203.0.113.0/24", "2001:db8::/32"],
                            description="ssh")],
        resources=[FirewallResource(type="server", server=server)],
    )
    for a in fw_resp.actions:
        a.wait_until_finished()
    fw = client.firewalls.get_by_id(fw_resp.firewall.id)
    assert fw.applied_to[0].server.id == server.id
    assert fw.rules[0].port == "22"
    server = client.servers.get_by_id(server.id)
    assert [(f.firewall.id, f.status) for f in server.public_net.firewalls] == [(fw.id, "applied")]
    for a in fw.set_rules([FirewallRule(direction="in", protocol="icmp", source_ips=["0.0.0.0/0"])]):
        a.wait_until_finished()
    try:
        fw.delete()
        raise AssertionError("applied firewall deleted")
    except hcloud.APIException as e:
        assert e.code == "resource_in_use", e.code
    step("firewall created, applied, rules replaced; delete refused while applied")

    server.delete().wait_until_finished()
    assert fw.delete() is True
    assert client.servers.get_all() == []
    assert client.firewalls.get_all() == []
    step("server and firewall deleted")

    anonymous = Client(token="wrong-token", api_endpoint=url)
    try:
        anonymous.servers.get_all()
        raise AssertionError("wrong token accepted")
    except hcloud.APIException as e:
        assert e.code == "unauthorized", e.code
    import requests

    r = requests.get(url + "/servers", timeout=10)
    assert r.status_code == 401, r.status_code
    assert r.json()["error"]["code"] == "unauthorized"
    step("401 unauthorized without a token")


def check_cloudflare(url, token, account_id, zone_id, zone_name):
    cf = cloudflare.Cloudflare(api_token=token, base_url=url, max_retries=2)
    assert cf.user.tokens.verify().status == "active"
    zones = list(cf.zones.list(name=zone_name))
    assert [z.id for z in zones] == [zone_id], zones
    step("token verified, zone found by name")
    secret = base64.b64encode(b"s" * 32).decode()
    tunnel = cf.zero_trust.tunnels.cloudflared.create(
        account_id=account_id, name="py-check-tunnel", config_src="cloudflare", tunnel_secret=secret
    )
    assert tunnel.id and tunnel.name == "py-check-tunnel", tunnel
    step(f"tunnel {tunnel.id} created")

    listed = list(cf.zero_trust.tunnels.cloudflared.list(account_id=account_id, name="py-check-tunnel",
                                                         is_deleted=False))
    assert [t.id for t in listed] == [tunnel.id], listed
    step("tunnel listed by name")

    hostname = f"bot.{zone_name}"
    ingress = [{"hostname": hostname, "service": "http://localhost:8080"}, {"service": "http_status:404"}]
    c1 = cf.zero_trust.tunnels.cloudflared.configurations.update(
        tunnel_id=tunnel.id, account_id=account_id, config={"ingress": ingress})
    c2 = cf.zero_trust.tunnels.cloudflared.configurations.update(
        tunnel_id=tunnel.id, account_id=account_id, config={"ingress": ingress})
    assert c2.version > c1.version, (c1.version, c2.version)
    got = cf.zero_trust.tunnels.cloudflared.configurations.get(tunnel_id=tunnel.id, account_id=account_id)
    assert got.config.ingress[0].hostname == hostname
    step("configuration put twice, version grew")

    token_str = cf.zero_trust.tunnels.cloudflared.token.get(tunnel_id=tunnel.id, account_id=account_id)
    decoded = json.loads(base64.b64decode(token_str))
    assert decoded == {"a": account_id, "t": tunnel.id, "s": secret}, "token does not decode"
    step("token read and decoded")

    rec = cf.dns.records.create(zone_id=zone_id, type="CNAME", name=hostname,
                                content=f"{tunnel.id}.cfargotunnel.com", proxied=True, ttl=1,
                                comment="crabglamp")
    assert rec.proxied and rec.name == hostname, rec
    recs = list(cf.dns.records.list(zone_id=zone_id, name={"exact": hostname}))
    assert [r.id for r in recs] == [rec.id], recs
    all_recs = list(cf.dns.records.list(zone_id=zone_id, per_page=1))
    assert len(all_recs) == 1
    try:
        cf.dns.records.create(zone_id=zone_id, type="A", name=hostname, content="198.51.100.1", ttl=1)
        raise AssertionError("A over CNAME accepted")
    except cloudflare.BadRequestError:
        pass
    cf.dns.records.delete(dns_record_id=rec.id, zone_id=zone_id)
    assert list(cf.dns.records.list(zone_id=zone_id, name={"exact": hostname})) == []
    step("proxied CNAME created, listed, deleted")

    tunnels = cf.zero_trust.tunnels.cloudflared
    assert tunnels.get(tunnel_id=tunnel.id, account_id=account_id).status == "inactive"
    # A connector through the control API (what the sandbox's cloudflared does for a booted
    # server): the typed models read its connections and connectors.
    control = url.split("/client/v4")[0] + "/_sim"
    auth = {"Authorization": f"Bearer {token}"}
    r = requests.post(f"{control}/tunnels/{tunnel.id}/connections", headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    got = tunnels.get(tunnel_id=tunnel.id, account_id=account_id)
    assert got.status == "healthy" and got.conns_inactive_at is None, got
    assert all(c.colo_name and c.is_pending_reconnect is False and c.client_id for c in got.connections), got
    connectors = list(tunnels.connections.get(tunnel_id=tunnel.id, account_id=account_id))
    assert len(connectors) == 1 and len(connectors[0].conns) == len(got.connections), connectors
    tunnels.connections.delete(tunnel_id=tunnel.id, account_id=account_id)
    assert tunnels.get(tunnel_id=tunnel.id, account_id=account_id).status == "down"
    step("connector through the control API: healthy, connections typed, dropped: down")

    # Cloudflare's 429 as the SDK sees it, on a budget shrunk through the control API: the
    # whole window is blocked, with Retry-After.
    before = requests.get(f"{control}/rate_limit", headers=auth, timeout=10).json()
    r = requests.put(f"{control}/rate_limit", headers=auth, timeout=10,
                     json={"capacity": 2, "refill_per_sec": 2 / 300})
    assert r.status_code == 200, r.text
    strict = cloudflare.Cloudflare(api_token=token, base_url=url, max_retries=0)
    for _ in range(2):
        strict.zero_trust.tunnels.cloudflared.get(tunnel_id=tunnel.id, account_id=account_id)
    try:
        strict.zero_trust.tunnels.cloudflared.get(tunnel_id=tunnel.id, account_id=account_id)
        raise AssertionError("over the budget and not refused")
    except cloudflare.RateLimitError as e:
        assert e.status_code == 429
        assert int(e.response.headers["retry-after"]) >= 290, e.response.headers
        assert e.response.headers["ratelimit-policy"] == '"burst";q=2;w=300', e.response.headers
        assert e.body["errors"][0]["code"] == 971, e.body
    requests.put(f"{control}/rate_limit", headers=auth, timeout=10,
                 json={"capacity": before["capacity"], "refill_per_sec": before["refill_per_sec"]})
    step("429 once the budget is spent: RateLimitError with Retry-After for the whole window")

    deleted = cf.zero_trust.tunnels.cloudflared.delete(tunnel_id=tunnel.id, account_id=account_id)
    assert deleted.deleted_at is not None
    assert list(cf.zero_trust.tunnels.cloudflared.list(account_id=account_id, is_deleted=False)) == []
    assert len(list(cf.zero_trust.tunnels.cloudflared.list(account_id=account_id, is_deleted=True))) == 1
    step("tunnel deleted and still listable as deleted")

    bad = cloudflare.Cloudflare(api_token="wrong", base_url=url, max_retries=0)
    try:
        bad.zero_trust.tunnels.cloudflared.create(account_id=account_id, name="x")
        raise AssertionError("wrong token accepted")
    except cloudflare.AuthenticationError:
        pass
    step("wrong token refused")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hetzner-url")
    p.add_argument("--hetzner-token")
    p.add_argument("--cloudflare-url")
    p.add_argument("--cloudflare-token")
    p.add_argument("--account-id")
    p.add_argument("--zone-id")
    p.add_argument("--zone-name", default="example.com")
    a = p.parse_args()
    started = time.time()
    if a.hetzner_url:
        check_hetzner(a.hetzner_url, a.hetzner_token)
    if a.cloudflare_url:
        check_cloudflare(a.cloudflare_url, a.cloudflare_token, a.account_id, a.zone_id, a.zone_name)
    print(f"all checks passed in {time.time() - started:.1f}s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure as one line plus the trace
        import traceback

        traceback.print_exc()
        print(f"FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
