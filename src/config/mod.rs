//! The YAML config: what operators write, its defaults, and how a file is checked.
//!
//! - `schema`: the types, each field with its meaning and default (`impl Default` per struct).
//! - `validate`: [`parse`] reads the text section by section and checks it.
//! - `errors`: [`ConfigError`], [`ConfigErrors`].
//! - `locate`: the line of a field path; `units`: durations and sizes.
//!
//! Every error names the file, the line and the field path (`edge.yaml:14:
//! origins.web.keepalive.idle_timeout: ...`), and all errors of a file are reported together: an
//! operator fixing a config should not have to run `edge -t` once per typo. Each top-level
//! section, each origin and each route is deserialized on its own so that one bad entry does not
//! hide the errors of the next.

mod errors;
mod locate;
mod schema;
mod tls;
pub mod units;
mod validate;
mod validate_cache;
mod validate_cluster;
mod validate_listen;

use std::path::Path;

pub use crate::host::valid_host;
pub use errors::{ConfigError, ConfigErrors};
pub use locate::Seg;
pub use schema::{
    AdminSettings, Balance, CacheBypass, CacheKeySettings, CacheSettings, ClientSettings,
    ClusterSettings, Config, DiskSettings, HealthCheck, KeepaliveSettings, LogLevel, LogSettings,
    NatsSettings, OriginConfig, PassiveHealth, QueryKey, RangeMisses, RouteCache, RouteConfig,
    ServerSettings, ServerSpec, TcpKeepalive, Timeouts,
};
pub use tls::{CertificateFiles, ListenFields, ListenSpec, Listener, ListenerTls, OriginTls};
pub use units::{Dur, Size};
pub use validate::parse;

/// Reads and validates a config file; returns it with the text it was read from.
pub fn load(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: None,
            path: ".".into(),
            message: format!("cannot read config: {e}"),
        }])
    })?;
    parse(&text, &file).map(|c| (c, text))
}

#[cfg(test)]
mod tests;
