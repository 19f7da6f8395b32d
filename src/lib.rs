//! edge: a CDN edge proxy on Pingora.
//!
//! A request's path through the code, in the order it happens:
//!
//! 1. [`express`]: the express lane reads the request on the client connection. A plain fresh
//!    hit (the rule is [`cache::hit`]'s) is written straight back; anything else is handed to
//!    the proxy with the bytes already read.
//! 2. [`proxy`]: Pingora's phases, in the order Pingora calls them, each handing its decision
//!    to its owner: [`client`] (keep-alive), [`guard`] (refusals), [`origin::router`] (which
//!    origin), [`cache`] (lookup, storage policy, `Cache-Status`), [`origin`] (which server,
//!    which connection, what is learned of it), and [`served`] (the request's record: metrics
//!    and access log, for both paths).
//!
//! Around it: [`state`] holds what is built once (the cache, the metrics, the connection
//! ledger) and the config in force; [`config`] is what operators write; [`reload`] swaps a new
//! config in; [`admin`] exposes metrics, reload and purge; [`cluster`] shares purges with the
//! rest of the fleet over NATS JetStream; [`background`] runs health checks
//! and idle-timeout probes; [`connections`] holds the client connection limit; [`server`] wires
//! it all into Pingora. Leaves: [`host`], [`hash`] (the one specified hash), [`clock`],
//! [`metrics`], [`logging`], [`access_log`] (its buffered writer), [`demo`].

pub mod access_log;
pub mod admin;
pub mod background;
pub mod cache;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod demo;
pub mod express;
pub mod guard;
pub mod hash;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod reload;
pub mod served;
pub mod server;
pub mod state;
pub mod tls;
