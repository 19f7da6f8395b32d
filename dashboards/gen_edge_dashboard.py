#!/usr/bin/env python3
"""Generates edge.json, the Grafana dashboard for edge. Edit here, then run:
    python3 dashboards/gen_edge_dashboard.py
Panel queries live in one place so that tests (and issue 4's Prometheus check) can read them."""
import json, os

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
O = 'origin=~"$origin"'
R = "[$__rate_interval]"

def ts(title, desc, targets, unit="short", x=0, y=0, w=12, h=8, thresholds=None, minv=None, maxv=None,
       right_axis=None):
    p = {
        "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 5}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)} for i, (e, l) in enumerate(targets)],
    }
    d = p["fieldConfig"]["defaults"]
    if minv is not None: d["min"] = minv
    if maxv is not None: d["max"] = maxv
    if thresholds:
        d["thresholds"] = {"mode": "absolute", "steps": thresholds}
        d["custom"]["thresholdsStyle"] = {"mode": "line"}
    if right_axis:
        # One series is a share (0..1) beside rates: on its own axis, on the right.
        p["fieldConfig"]["overrides"].append({
            "matcher": {"id": "byName", "options": right_axis},
            "properties": [{"id": "custom.axisPlacement", "value": "right"},
                           {"id": "unit", "value": "percentunit"}, {"id": "min", "value": 0},
                           {"id": "max", "value": 1}]})
    return p

panels = [
    ts("Upstream connection reuse ratio",
       "Share of upstream requests that rode an already-open connection, per origin. Good: at or above "
       "the red line at 99.9% under steady load. A dip means misses pay a TCP handshake: check "
       "keepalive.idle_timeout against the origin's own keep-alive timeout, and pool_size.",
       [(f'sum by (origin) (rate(edge_upstream_requests_total{{connection="reused",{O}}}{R})) / '
         f'sum by (origin) (rate(edge_upstream_requests_total{{{O}}}{R}))', "{{origin}}")],
       unit="percentunit", x=0, y=0, minv=0, maxv=1,
       thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 0.999}]),
    ts("New upstream connections per second, by reason",
       "Connections opened toward origins: demand = a request waited for it (near zero at steady "
       "load); warm = opened ahead of need (keepalive.warm; about 60/T per slot a minute against an "
       "origin closing idle connections after T seconds); probe = idle-timeout measurement; "
       "health_check.",
       [(f'sum by (origin, reason) (rate(edge_upstream_connections_opened_total{{{O}}}{R}))', "{{origin}} {{reason}}")],
       unit="cps", x=12, y=0),
    ts("Upstream TTFB (request sent to first response byte), by connection",
       "p50/p95/p99 of the origin's time to first byte, split by connection: reused (pooled), warm "
       "(opened ahead of need) or new (opened for the request). The gap between new and reused is "
       "what connection reuse saves on every miss.",
       [(f'histogram_quantile({q}, sum by (le, connection) (rate(edge_upstream_ttfb_seconds_bucket{{{O}}}{R})))',
         f"p{int(q*100)} {{{{connection}}}}") for q in (0.5, 0.95, 0.99)],
       unit="s", x=0, y=8),
    ts("Upstream connect time p95",
       "TCP connect time of new upstream connections. Good: about one network round trip to the origin.",
       [(f'histogram_quantile(0.95, sum by (le, origin) (rate(edge_upstream_connect_seconds_bucket{{{O}}}{R})))', "{{origin}}")],
       unit="s", x=12, y=8),
    ts("Requests per second by status class",
       "Client requests answered by the edge, by status class. Good: 5xx flat at zero; a 5xx rise with "
       "connect failures below means an origin is down.",
       [(f'sum by (status) (rate(edge_requests_total{{{O},route=~"$route"}}{R}))', "{{status}}")],
       unit="reqps", x=0, y=16),
    ts("Request duration p50/p99",
       "Client request header to end of response, per origin.",
       [(f'histogram_quantile({q}, sum by (le, origin) (rate(edge_request_duration_seconds_bucket{{{O}}}{R})))',
         f"p{int(q*100)} {{{{origin}}}}") for q in (0.5, 0.99)],
       unit="s", x=12, y=16),
    ts("Origin servers up",
       "1 = the server takes traffic; 0 = health checks or connect failures took it out. Good: all at 1.",
       [(f'edge_origin_server_up{{{O}}}', "{{origin}} {{server}}")],
       x=0, y=24, minv=0, maxv=1),
    ts("Connect failures and retries per second",
       "Failed connects per server, and further attempts: connect_failure = failover to another "
       "server, connection_lost = a reused connection failed and an idempotent request was retried. "
       "Good: zero.",
       [(f'sum by (origin, server) (rate(edge_upstream_connect_failures_total{{{O}}}{R}))', "fail {{origin}} {{server}}"),
        (f'sum by (origin, reason) (rate(edge_upstream_retries_total{{{O}}}{R}))', "retry {{origin}} {{reason}}")],
       unit="ops", x=12, y=24),
    ts("Upstream connections closed by the edge",
       "Connections the edge closed after a response instead of pooling them: max_requests (limit "
       "reached, expected and rare), pool_full (more concurrency than pool_size: raise pool_size "
       "if this is steady), pooling_off.",
       [(f'sum by (origin, reason) (rate(edge_upstream_connections_closed_total{{{O}}}{R}))', "{{origin}} {{reason}}")],
       unit="ops", x=0, y=32),
    ts("Refused client requests",
       "Requests refused before reaching any origin (bad Host, traversal, oversized headers). A spike "
       "usually means a scanner.",
       [(f'sum by (reason) (rate(edge_refused_requests_total{R}))', "{{reason}}")],
       unit="reqps", x=12, y=32),
    ts("Client connections",
       "Client connections open, new ones per second, and requests per connection (median). "
       "Many connections with one request each means clients do not keep connections alive.",
       [('edge_client_connections_open', "open"),
        (f'rate(edge_client_connections_total{R})', "new per second"),
        (f'histogram_quantile(0.5, sum by (le) (rate(edge_client_requests_per_connection_bucket{R})))', "requests per connection p50")],
       x=0, y=40),
    ts("Response bytes per second by cache status",
       "Body bytes sent to clients. With the cache, the hit share of this is the byte hit ratio.",
       [(f'sum by (cache) (rate(edge_response_bytes_total{{{O}}}{R}))', "{{cache}}")],
       unit="Bps", x=12, y=40),
    ts("Cache hit ratio (requests and bytes)",
       "Share of requests, and of response bytes, served from the cache (fresh hits, stale serves "
       "and 304-revalidated objects), among requests that used the cache or could have. Good: "
       "high and steady; a drop after a deploy usually means a changed cache key or Cache-Control.",
       [(f'sum(rate(edge_requests_total{{cache=~"hit|stale|revalidated",{O},route=~"$route"}}{R})) / '
         f'sum(rate(edge_requests_total{{cache!~"none|bypass",{O},route=~"$route"}}{R}))', "requests"),
        (f'sum(rate(edge_response_bytes_total{{cache=~"hit|stale|revalidated",{O}}}{R})) / '
         f'sum(rate(edge_response_bytes_total{{cache!~"none|bypass",{O}}}{R}))', "bytes")],
       unit="percentunit", x=0, y=56, minv=0, maxv=1),
    ts("Cache size and evictions",
       "Memory held by cached objects (bounded by cache.max_size) beside the process's memory and the "
       "bodies kept in memory files for sendfile (RAM that RSS does not show), objects, "
       "and evictions per second. "
       "Steady evictions with a falling hit ratio mean max_size is too small for the working set.",
       [('edge_cache_size_bytes{tier="memory"}', "bytes"),
        ('edge_memory_resident_bytes', "process memory (resident)"),
        ('edge_memory_allocated_bytes', "heap in use"),
        ('edge_cache_file_bytes', "bodies in memory files (outside RSS)"),
        ('edge_cache_objects{tier="memory"}', "objects"),
        (f'rate(edge_cache_evictions_total{{tier="memory"}}{R})', "evictions/s"),
        (f'sum by (kind) (rate(edge_cache_purged_total{R}))', "purged/s {{kind}}")],
       x=12, y=56),
    ts("Requests per second by cache outcome",
       "hit, stale (served while revalidating or on origin error), revalidated (origin said 304), "
       "miss, expired (refetched), request (client asked for fresh), bypass (route/method/rule).",
       [(f'sum by (cache) (rate(edge_requests_total{{{O},route=~"$route"}}{R}))', "{{cache}}")],
       unit="reqps", x=0, y=64),
    ts("Upstream idle timeouts: learned and effective",
       "Each server's own idle timeout as the edge learned it, and how long its pooled connections "
       "may now stay idle (the configured idle_timeout, or the learned one minus a safety margin). "
       "Effective should stay below learned.",
       [(f'max by (origin, server) (edge_upstream_idle_timeout_learned_seconds{{{O}}})', "learned {{origin}} {{server}}"),
        (f'max by (origin, server) (edge_upstream_idle_timeout_effective_seconds{{{O}}})', "effective {{origin}} {{server}}")],
       unit="s", x=12, y=64),
    ts("Requests that met a closed pooled connection",
       "retried: an idempotent request found its pooled connection closed by the origin and was "
       "retried on a new one (costs a round trip). failed: it could not be retried. Good: failed "
       "at zero, retried near zero (learning keeps connections clear of origins' timeouts).",
       [(f'sum by (origin, outcome) (rate(edge_upstream_connection_lost_total{{{O}}}{R}))', "{{origin}} {{outcome}}")],
       unit="ops", x=0, y=72),
    ts("Config reloads",
       "Reloads per result over the last 5 minutes, and seconds since the last successful one. "
       "A failure means the previous config keeps serving: POST /reload or the log says why.",
       [('sum by (result) (increase(edge_config_reloads_total[5m]))', "{{result}}"),
        ('time() - max(edge_config_last_reload_success_timestamp_seconds > 0)', "seconds since last success")],
       x=0, y=80),
    ts("Config version in force",
       "One line per config version (hash of the file); a step shows when it changed.",
       [('max by (version) (edge_config_info)', "{{version}}")],
       x=12, y=80, minv=0, maxv=1),
    ts("TLS handshakes with clients per second: by version, resumed share, failures",
       "Completed handshakes on HTTPS listeners by version, the share that resumed a session "
       "(right axis: no certificate sent and no signature made, so cheaper for the edge), and "
       "failed handshakes by reason. Many handshakes per request mean clients do not keep "
       "connections (check client.keepalive_timeout); a low resumed share, that they do not "
       "resume. Failures: closed and not_tls are scanners and plain HTTP; certificate_rejected "
       "means clients refuse the certificate the edge presents (a missing name or chain).",
       [(f'sum by (version) (rate(edge_client_tls_handshakes_total{R}))', "{{version}}"),
        (f'sum(rate(edge_client_tls_handshakes_total{{resumed="true"}}{R})) / sum(rate(edge_client_tls_handshakes_total{R}))', "resumed share"),
        (f'sum by (reason) (rate(edge_client_tls_handshake_failures_total{R}))', "failed: {{reason}}")],
       unit="ops", x=0, y=88, right_axis="resumed share"),
    ts("Requests per second by protocol and scheme (h2 share)",
       "HTTP/1.0, HTTP/1.1 and h2, over http and https. The h2 share is what HTTPS clients "
       "negotiated by ALPN (listen[].http2).",
       [(f'sum by (protocol, scheme) (rate(edge_requests_by_protocol_total{R}))', "{{protocol}} {{scheme}}")],
       unit="reqps", x=12, y=88),
    ts("Upstream TLS handshake p95 (new connections to HTTPS origins), full and resumed",
       "What a miss on a new connection pays on top of TCP connect, by whether the origin "
       "resumed the edge's session. Pooled connections pay none. Full handshakes where resumed "
       "ones were expected: the origin does not keep sessions or tickets.",
       [(f'histogram_quantile(0.95, sum by (le, origin, resumed) (rate(edge_upstream_tls_handshake_seconds_bucket{{{O}}}{R})))', "{{origin}} resumed={{resumed}}")],
       unit="s", x=0, y=96),
    ts("Listener certificates: days until expiry",
       "Each certificate in force on an HTTPS listener, by its first name. The red line is the "
       "alert's 14 days: renew, then reload (SIGHUP or POST /reload).",
       [('(edge_tls_certificate_expiry_timestamp_seconds - time()) / 86400', "{{name}}")],
       unit="d", x=12, y=96, thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 14}]),
    ts("Cache-miss TTFB p50: reused, warm and new connections, per origin",
       "Median time to first byte of cache misses, on a pooled connection, a warm one (opened ahead "
       "of need) and a new one, per origin. The gap is what a miss pays when it waits for a TCP (and TLS) handshake: what a "
       "short origin keep-alive costs, and what connection reuse saves.",
       [(f'histogram_quantile(0.5, sum by (le, origin, connection) (rate(edge_upstream_ttfb_seconds_bucket{{cache="miss",{O}}}{R})))',
         "{{origin}} {{connection}}")],
       unit="s", x=0, y=104),
    ts("Share of upstream requests that paid a handshake",
       "Upstream requests whose connection was set up after they arrived (TCP, and TLS for HTTPS "
       "origins), per origin. Good: near zero at steady load. A steady share means pooled "
       "connections do not last until the next miss: the origin's keep-alive timeout is short for "
       "the traffic (keepalive.warm keeps connections ready), or pool_size is small.",
       [(f'sum by (origin) (rate(edge_upstream_handshake_waits_total{{{O}}}{R})) / '
         f'sum by (origin) (rate(edge_upstream_requests_total{{{O}}}{R}))', "{{origin}}")],
       unit="percentunit", x=12, y=104, minv=0, maxv=1),
    ts("Fleet purges: published, applied, replayed",
       "Purges this edge's admin API published to the fleet's NATS stream, purges it applied from "
       "the stream (other edges'), and of those the ones replayed after it was away (down or cut "
       "off from NATS).",
       [(f'sum by (instance) (rate(edge_cluster_purges_published_total{R}))', "published {{instance}}"),
        (f'sum by (instance) (rate(edge_cluster_purges_applied_total{R}))', "applied {{instance}}"),
        (f'sum by (instance) (rate(edge_cluster_purges_replayed_total{R}))', "replayed {{instance}}")],
       unit="short", x=0, y=112),
    ts("Fleet purge stream: lag and NATS connection",
       "Messages on the purge stream an edge knows of and has not applied (good: 0), purges taken "
       "at an edge and waiting for NATS to publish them (good: 0), and whether it has the stream "
       "open (1). An edge at 0 serves on; it applies what other edges purged meanwhile when it is "
       "back.",
       [('max by (instance) (edge_cluster_purge_lag)', "lag {{instance}}"),
        ('max by (instance) (edge_cluster_purges_queued)', "queued {{instance}}"),
        ('min by (instance) (edge_cluster_nats_connected)', "connected {{instance}}")],
       unit="short", x=12, y=112),
    ts("Disk tier: size, hits by tier, errors",
       "With cache.disk: bytes and objects on disk (bounded by cache.disk.max_size), lookups "
       "answered by each tier, disk evictions, and failures (write: disk full or I/O error; read; "
       "corrupt: a file that failed its checks, dropped). Failures never fail a request: the edge "
       "serves from memory and the origin. Steady write errors: the disk is full or failing.",
       [('sum by (instance) (edge_cache_size_bytes{tier="disk"})', "bytes on disk {{instance}}"),
        ('sum by (instance) (edge_cache_objects{tier="disk"})', "objects on disk {{instance}}"),
        (f'sum by (tier) (rate(edge_cache_hits_total{R}))', "hits/s {{tier}}"),
        (f'sum by (tier) (rate(edge_cache_evictions_total{R}))', "evictions/s {{tier}}"),
        (f'sum by (reason) (rate(edge_cache_disk_errors_total{R}))', "errors/s {{reason}}")],
       unit="short", x=0, y=120),
]
for i, p in enumerate(panels):
    p["id"] = i + 1

def var(name, query):
    return {"name": name, "label": name, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": "var"}, "definition": query,
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
            "current": {"selected": True, "text": "All", "value": "$__all"}, "sort": 1}

dash = {
    "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                  "pluginId": "prometheus", "pluginName": "Prometheus"}],
    "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                   {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
                   {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""}],
    "title": "edge: origins and connection reuse",
    "uid": "edge-origins",
    "description": "Is every cache miss riding a warm origin connection, and how fast do origins answer?",
    "tags": ["edge", "pingora"], "timezone": "", "schemaVersion": 38, "version": 1, "editable": True,
    "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
    "templating": {"list": [var("origin", "label_values(edge_upstream_requests_total, origin)"),
                            var("route", "label_values(edge_requests_total, route)")]},
    "annotations": {"list": []},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edge.json")
with open(out, "w") as f:
    json.dump(dash, f, indent=2)
    f.write("\n")
