//! The node's TLS material: server configurations for its https listeners and the
//! connector that dials https peers, read once at startup.

use crate::config::NodeConfig;
use crate::tls::{ServerTls, TlsConnector, TlsError, ALPN_H2, ALPN_HTTP1};
use std::sync::Arc;

/// The node's TLS material, read at startup so a bad file stops it with the flag named.
pub(super) struct NodeTls {
    /// Client listeners: gRPC and the JSON gateway (ALPN h2, then http/1.1).
    pub(super) client: Option<Arc<rustls::ServerConfig>>,
    /// Metrics listeners: the client side's certificate, HTTP/1.1.
    pub(super) metrics: Option<Arc<rustls::ServerConfig>>,
    pub(super) peer: Option<Arc<rustls::ServerConfig>>,
    /// The Redis listener with `--redis-tls`: the client side's certificate, no ALPN.
    pub(super) redis: Option<Arc<rustls::ServerConfig>>,
    /// Dials `https://` peer URLs: checks the peer CA, shows the peer certificate.
    pub(super) peer_dialer: Option<TlsConnector>,
    /// Dials other members' `https://` client URLs (the dashboard asks their health):
    /// checks the client side's trusted CA, shows the client side's certificate.
    pub(super) client_dialer: Option<Arc<rustls::ClientConfig>>,
}

impl NodeTls {
    pub(super) fn load(config: &NodeConfig) -> Result<Self, TlsError> {
        let client = config.client_tls.as_ref().map(ServerTls::load).transpose()?;
        let peer = config.peer_tls.as_ref().map(ServerTls::load).transpose()?;
        let peer_dialer = match (&config.peer_tls, &peer) {
            (Some(files), Some(peer)) => match &files.trusted_ca_file {
                Some(ca) => {
                    let roots = crate::tls::load_roots("peer-trusted-ca-file", ca)?;
                    Some(TlsConnector::new(crate::tls::client_config(
                        roots,
                        Some(peer.certificate.clone()),
                    )?))
                }
                None => None,
            },
            _ => None,
        };
        let client_dialer = match (&config.client_tls, &client) {
            (Some(files), Some(side)) => match &files.trusted_ca_file {
                Some(ca) => {
                    let flag = format!("{}trusted-ca-file", files.flag_prefix);
                    let roots = crate::tls::load_roots(&flag, ca)?;
                    Some(crate::tls::client_config(roots, Some(side.certificate.clone()))?)
                }
                None => None,
            },
            _ => None,
        };
        Ok(Self {
            client_dialer,
            client: client
                .as_ref()
                .map(|side| side.server_config(&[ALPN_H2, ALPN_HTTP1]))
                .transpose()?,
            metrics: client
                .as_ref()
                .map(|side| side.server_config(&[ALPN_HTTP1]))
                .transpose()?,
            redis: match config.redis_tls {
                true => client.as_ref().map(|side| side.server_config(&[])).transpose()?,
                false => None,
            },
            peer: peer.as_ref().map(|side| side.server_config(&[ALPN_H2])).transpose()?,
            peer_dialer,
        })
    }
}
