//! edge: a CDN edge proxy on Pingora.
//!
//! A request's path through the code: [`guard`] refuses hostile input, [`origin::router`] picks
//! the origin, [`origin`] picks a server and the connection settings, [`proxy`] orchestrates
//! Pingora's phases, [`metrics`] counts, [`admin`] exposes. [`config`] and [`live`] hold what
//! the operator asked for and what was built from it; [`server`] wires it all into Pingora.

pub mod admin;
pub mod cache;
pub mod config;
pub mod demo;
pub mod express;
pub mod guard;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod reload;
pub mod server;
