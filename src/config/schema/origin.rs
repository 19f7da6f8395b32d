//! `origins.NAME`: an origin's servers and how the edge balances, pools, times out and checks
//! them. Part of the schema (see the parent module for the conventions: defaults in each
//! struct's `impl Default`, required fields read through an "as written" twin).

use std::net::SocketAddr;

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use serde_yaml::Value;

use super::super::tls::OriginTls;
use super::super::units::Dur;
use super::super::validate::resolve;

/// `origins.NAME.balance`: how requests are spread over an origin's servers.
/// Default: `round_robin`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Servers in turn, ignoring weights.
    #[default]
    RoundRobin,
    /// nginx's smooth weighted round robin (weights 3:1 give A A B A).
    Weighted,
    /// Weighted rendezvous hashing on the URL part of the cache key: one object keeps reaching
    /// one server, the same on every edge, and only a down server's objects move.
    ConsistentHash,
}

/// Upstream keep-alive (`origins.NAME.keepalive`), as nginx's upstream `keepalive`,
/// `keepalive_timeout`, `keepalive_requests`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveSettings {
    /// How long an idle pooled connection is kept. Keep it below the origin's own keep-alive
    /// timeout, or requests race the origin's close. `0s` disables pooling. Default: `55s`.
    pub idle_timeout: Dur,
    /// Connections kept open per server of this origin. `0` disables pooling. Default: `64`.
    pub pool_size: usize,
    /// Requests sent on one upstream connection before the edge closes it, at least 1.
    /// Default: none (unlimited): a connection is retired when the origin asks (`Connection:
    /// close`, or the `max=` of its `Keep-Alive`), when it idles too long, or when the pool is
    /// full. A fixed default such as nginx's 1000 would open a new connection every 1000
    /// requests, so steady reuse could never pass 0.999.
    pub max_requests: Option<u32>,
    /// Learn each server's own idle timeout (from `Keep-Alive: timeout=`, and by measuring
    /// when it closes an idle connection) and close pooled connections a safety margin before
    /// it, never later than `idle_timeout`. Default: `true`.
    pub learn: bool,
    /// The safety margin before a learned timeout. Default: none, i.e. measured (twice the
    /// smallest recent time to first byte from that server, plus 5 ms).
    pub margin: Option<Dur>,
    /// Connections per server kept open and ready ahead of need, so that a request finding no
    /// pooled connection does not wait for a TCP connect (see `origin::warm`). Each is
    /// replaced before it idles past the effective idle limit: against an origin that closes
    /// idle connections after T, one warm slot costs about 60/T new connections a minute.
    /// Default: `0` (off).
    pub warm: usize,
    /// Warm connections are kept only while the server gets requests: after this long without
    /// one they are closed and not replaced until the next request. Default: `10m`.
    pub warm_idle: Dur,
}

impl Default for KeepaliveSettings {
    fn default() -> Self {
        KeepaliveSettings {
            idle_timeout: Dur::secs(55),
            pool_size: 64,
            max_requests: None,
            learn: true,
            margin: None,
            warm: 0,
            warm_idle: Dur::secs(600),
        }
    }
}

/// What decides whether two requests may share a pooled connection (the pool group). `warm`
/// and `warm_idle` are left out: they only decide how many connections are opened ahead of
/// need, so a reload that changes them keeps the pooled connections.
impl std::hash::Hash for KeepaliveSettings {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.idle_timeout.hash(h);
        self.pool_size.hash(h);
        self.max_requests.hash(h);
        self.learn.hash(h);
        self.margin.hash(h);
    }
}

/// Upstream timeouts (`origins.NAME.timeouts`); each longer than `0s`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to one server; on expiry the next server is tried. Default: `2s`.
    pub connect: Dur,
    /// Longest wait for any read from the origin (header or body); expiry gives 504.
    /// Default: `30s`.
    pub read: Dur,
    /// Longest wait for any write to the origin. Default: `30s`.
    pub write: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Dur::secs(2),
            read: Dur::secs(30),
            write: Dur::secs(30),
        }
    }
}

/// Kernel TCP keep-alive probes on upstream connections (`origins.NAME.tcp_keepalive`; off
/// unless written): finds dead peers behind NAT or firewalls that silently drop idle flows.
/// `idle` and `interval` at least `1s`, `count` at least 1.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct TcpKeepalive {
    /// Idle time before the first probe. Default: `60s`.
    pub idle: Dur,
    /// Time between probes. Default: `10s`.
    pub interval: Dur,
    /// Unanswered probes before the connection is dropped. Default: `3`.
    pub count: usize,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            idle: Dur::secs(60),
            interval: Dur::secs(10),
            count: 3,
        }
    }
}

/// Active health check (`origins.NAME.health_check`; off unless written): an HTTP GET to every
/// server of the origin; a 2xx or 3xx within `timeout` passes.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Path requested, starting with `/`. Default: `/`.
    pub path: String,
    /// Time between two checks of a server, longer than `0s`. Default: `5s`.
    pub interval: Dur,
    /// Longest wait for an answer, longer than `0s`. Default: `2s`.
    pub timeout: Dur,
    /// Consecutive successes that bring a down server back, at least 1. Default: `2`.
    pub rise: u32,
    /// Consecutive failures that take a server down, at least 1. Default: `3`.
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            interval: Dur::secs(5),
            timeout: Dur::secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

/// Passive health (`origins.NAME.passive_health`), as nginx's `max_fails` / `fail_timeout`:
/// connect failures seen by real traffic take a server out of rotation for `fail_timeout`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    /// Consecutive connect failures that take a server out. Default: `1`.
    pub max_fails: u32,
    /// How long it stays out. Default: `10s`.
    pub fail_timeout: Dur,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_fails: 1,
            fail_timeout: Dur::secs(10),
        }
    }
}

/// One server of an origin (`origins.NAME.servers[]`): `"host:port"`, or
/// `{address: "host:port", weight: 3}`. Names are resolved when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// As written by the operator (host:port). Required.
    pub address: String,
    /// Relative share of requests under `weighted` and `consistent_hash`, at least 1.
    /// Default: `1`.
    pub weight: u32,
    /// Resolved once at load; a reload resolves again.
    pub addr: SocketAddr,
}

/// A server entry's mapping form as written; `address` is an `Option` as in [`OriginFields`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerEntry {
    address: Option<String>,
    weight: u32,
}

impl Default for ServerEntry {
    fn default() -> Self {
        ServerEntry {
            address: None,
            weight: 1,
        }
    }
}

impl<'de> Deserialize<'de> for ServerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entry = match Value::deserialize(d)? {
            Value::String(address) => ServerEntry {
                address: Some(address),
                ..ServerEntry::default()
            },
            v @ Value::Mapping(_) => ServerEntry::deserialize(v).map_err(D::Error::custom)?,
            _ => {
                return Err(D::Error::custom(
                    r#"expected an address like "127.0.0.1:8000" or {address: "127.0.0.1:8000", weight: 3}"#,
                ))
            }
        };
        let address = entry
            .address
            .ok_or_else(|| D::Error::missing_field("address"))?;
        let addr = resolve(&address).map_err(D::Error::custom)?;
        if entry.weight == 0 {
            return Err(D::Error::custom("weight must be at least 1"));
        }
        Ok(ServerSpec {
            address,
            weight: entry.weight,
            addr,
        })
    }
}

/// One origin (`origins.NAME`): a group of servers and how the edge talks to them. Read through
/// `OriginFields`, where the defaults are.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginConfig {
    /// Required, at least one, none twice.
    pub servers: Vec<ServerSpec>,
    /// Default: `round_robin`.
    pub balance: Balance,
    /// Host header sent upstream, a valid Host value. Default: none (the client's Host is
    /// passed through).
    pub host: Option<String>,
    /// Default: [`KeepaliveSettings::default`].
    pub keepalive: KeepaliveSettings,
    /// Default: [`Timeouts::default`].
    pub timeouts: Timeouts,
    /// Default: none (no kernel probes).
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Default: none (no active checks).
    pub health_check: Option<HealthCheck>,
    /// Default: [`PassiveHealth::default`].
    pub passive_health: PassiveHealth,
    /// Further servers tried after a connect failure, or after a connection lost before any
    /// answer (idempotent requests), within this origin. Default: `2`.
    pub retries: usize,
    /// HTTPS to this origin. Default: none (cleartext).
    pub tls: Option<OriginTls>,
    /// HTTP/2 to this origin, multiplexed (needs `tls`; falls back to HTTP/1.1 when the origin
    /// does not offer h2). Default: false.
    pub http2: bool,
    /// This origin is a shield tier: its servers are other edges (see `crate::cluster`).
    /// Default: none (a plain origin).
    pub shield: Option<ShieldSettings>,
}

/// `origins.NAME.shield`: the origin's servers are edges of a shield (parent) tier, each the
/// home of the objects `balance: consistent_hash` gives it.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShieldSettings {
    /// The origin asked directly when no shield server answers (every one down, or tried and
    /// failed). Required; another origin, not itself a shield.
    pub fallback: String,
}

/// [`OriginConfig`] as written. serde's struct-level `default` fills every missing field and
/// cannot keep one required, so `servers` is an `Option` here; its absence is then refused with
/// serde's own "missing field" error at the origin's path, as a derived required field was.
/// Same fields in the same order as `OriginConfig` (the order shows in "unknown field, expected
/// one of" errors); `expecting` keeps the type name in "invalid type" errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "struct OriginConfig")]
struct OriginFields {
    servers: Option<Vec<ServerSpec>>,
    balance: Balance,
    host: Option<String>,
    keepalive: KeepaliveSettings,
    timeouts: Timeouts,
    tcp_keepalive: Option<TcpKeepalive>,
    health_check: Option<HealthCheck>,
    passive_health: PassiveHealth,
    retries: usize,
    tls: Option<OriginTls>,
    http2: bool,
    shield: Option<ShieldSettings>,
}

impl Default for OriginFields {
    fn default() -> Self {
        OriginFields {
            servers: None,
            balance: Balance::default(),
            host: None,
            keepalive: KeepaliveSettings::default(),
            timeouts: Timeouts::default(),
            tcp_keepalive: None,
            health_check: None,
            passive_health: PassiveHealth::default(),
            retries: 2,
            tls: None,
            http2: false,
            shield: None,
        }
    }
}

impl<'de> Deserialize<'de> for OriginConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = OriginFields::deserialize(d)?;
        Ok(OriginConfig {
            servers: f
                .servers
                .ok_or_else(|| D::Error::missing_field("servers"))?,
            balance: f.balance,
            host: f.host,
            keepalive: f.keepalive,
            timeouts: f.timeouts,
            tcp_keepalive: f.tcp_keepalive,
            health_check: f.health_check,
            passive_health: f.passive_health,
            retries: f.retries,
            tls: f.tls,
            http2: f.http2,
            shield: f.shield,
        })
    }
}
