//! Rendezvous: who is rank 0, where it listens, and which rank / world size this process has.
//!
//! Two init methods, as `torch.distributed.init_process_group(init_method=...)`:
//! - `tcp://HOST:PORT`: rank 0 listens on PORT; rank and world size come from the command line
//!   (`--rank`, `--world-size`, after the `--multiprocessing-distributed` arithmetic).
//! - `env://`: `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` (and optionally `LOCAL_RANK`)
//!   from the environment, as torchrun / `torch.distributed.launch` / Slurm wrappers set them.
//!   A rank or world size passed explicitly wins over the environment, as in PyTorch.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{DistributedError, Result};
use crate::group::DEFAULT_TIMEOUT;

/// `MASTER_ADDR`: host of rank 0 (`env://`).
pub const ENV_MASTER_ADDR: &str = "MASTER_ADDR";
/// `MASTER_PORT`: port rank 0 listens on (`env://`).
pub const ENV_MASTER_PORT: &str = "MASTER_PORT";
/// `RANK`: global rank of this process (`env://`).
pub const ENV_RANK: &str = "RANK";
/// `WORLD_SIZE`: number of processes (`env://`).
pub const ENV_WORLD_SIZE: &str = "WORLD_SIZE";
/// `LOCAL_RANK`: rank of this process on its node, i.e. its GPU index (`env://`).
pub const ENV_LOCAL_RANK: &str = "LOCAL_RANK";
/// `LOCAL_WORLD_SIZE`: processes on this node (set by torchrun and by [`crate::spawn_workers`]).
pub const ENV_LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";

/// A parsed `--dist-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistUrl {
    /// `tcp://HOST:PORT` (IPv6 as `tcp://[::1]:PORT`).
    Tcp {
        /// Host name or IP address of rank 0.
        host: String,
        /// Port rank 0 listens on (1..=65535).
        port: u16,
    },
    /// `env://`: everything from the environment.
    Env,
}

impl DistUrl {
    /// Parses `tcp://HOST:PORT` or `env://`.
    pub fn parse(url: &str) -> Result<DistUrl> {
        let bad = |reason: &str| DistributedError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url == "env://" {
            return Ok(DistUrl::Env);
        }
        let Some(rest) = url.strip_prefix("tcp://") else {
            return Err(bad("expected tcp://HOST:PORT or env://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only tcp://HOST:PORT is supported (no path, query or user)",
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in IPv6 host"))?;
            let p = p
                .strip_prefix(':')
                .ok_or_else(|| bad("missing :PORT after the IPv6 host"))?;
            (h, p)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.contains(':') && !rest.starts_with('[') {
            return Err(bad("write IPv6 hosts in brackets: tcp://[::1]:PORT"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad(&format!("port `{port}` is not a number in 1..=65535")))?;
        if port == 0 {
            return Err(bad(
                "port 0 cannot be shared with the other ranks; pick a fixed port",
            ));
        }
        Ok(DistUrl::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl FromStr for DistUrl {
    type Err = DistributedError;
    fn from_str(s: &str) -> Result<Self> {
        DistUrl::parse(s)
    }
}

impl fmt::Display for DistUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistUrl::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            DistUrl::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            DistUrl::Env => write!(f, "env://"),
        }
    }
}

/// How to join a process group: the `--dist-url`, optional explicit rank / world size, timeout.
///
/// Defaults: no explicit rank / world size (required for `tcp://`, read from the environment
/// for `env://`), timeout [`DEFAULT_TIMEOUT`] (30 min, PyTorch's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousConfig {
    /// `tcp://HOST:PORT` or `env://`.
    pub url: String,
    /// Global rank of this process (wins over `RANK`).
    pub rank: Option<usize>,
    /// Number of processes (wins over `WORLD_SIZE`).
    pub world_size: Option<usize>,
    /// Timeout of the rendezvous and of every collective of the resulting group.
    pub timeout: Duration,
    /// Shared secret of the TCP rendezvous (none: any process that speaks the protocol may
    /// join, as with PyTorch's TCPStore).
    pub token: Option<DistToken>,
}

/// The shared secret of a TCP rendezvous.
///
/// With a token, rank 0 and every joining rank prove to each other that they hold it by a
/// challenge-response with HMAC-SHA256 over the joining rank's hello and one fresh random nonce
/// from each side: the token itself never crosses the wire, a recorded handshake cannot be
/// replayed, and a process without the token can neither join nor disturb the rendezvous (its
/// connection is refused and counted, the others go on). `Debug` prints no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DistToken(String);

impl DistToken {
    /// A token from its text; an empty one is refused.
    pub fn new(secret: impl Into<String>) -> Result<DistToken> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(DistributedError::InvalidConfig(
                "the rendezvous token must not be empty".into(),
            ));
        }
        Ok(DistToken(secret))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for DistToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DistToken(<secret>)")
    }
}

impl RendezvousConfig {
    /// A config for `url` with the defaults above.
    pub fn new(url: impl Into<String>) -> Self {
        RendezvousConfig {
            url: url.into(),
            rank: None,
            world_size: None,
            timeout: DEFAULT_TIMEOUT,
            token: None,
        }
    }

    /// Sets the shared secret of the TCP rendezvous (see [`DistToken`]).
    pub fn with_token(mut self, token: Option<DistToken>) -> Self {
        self.token = token;
        self
    }

    /// Sets the global rank.
    pub fn with_rank(mut self, rank: usize) -> Self {
        self.rank = Some(rank);
        self
    }

    /// Sets the world size.
    pub fn with_world_size(mut self, world_size: usize) -> Self {
        self.world_size = Some(world_size);
        self
    }

    /// Sets the timeout of the rendezvous and of every collective.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Resolves the config against the process environment.
    pub fn resolve(&self) -> Result<Rendezvous> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// Resolves the config, reading variables through `env` (for tests and embedding).
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Rendezvous> {
        if self.timeout.is_zero() {
            return Err(DistributedError::InvalidConfig(
                "the timeout must be positive".into(),
            ));
        }
        let num = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| DistributedError::Env {
                        name: name.to_string(),
                        reason: format!("`{v}` is not a non-negative integer"),
                    }),
            }
        };
        let required = |name: &str, value: Option<usize>, flag: &str| -> Result<usize> {
            value.ok_or_else(|| DistributedError::Env {
                name: name.to_string(),
                reason: format!("not set (env:// needs it, or pass {flag})"),
            })
        };
        let (host, port, rank, world_size, local_rank) = match DistUrl::parse(&self.url)? {
            DistUrl::Tcp { host, port } => {
                let rank = self.rank.ok_or_else(|| {
                    DistributedError::InvalidConfig(format!(
                        "{} needs an explicit rank (--rank)",
                        self.url
                    ))
                })?;
                let world = self.world_size.ok_or_else(|| {
                    DistributedError::InvalidConfig(format!(
                        "{} needs an explicit world size (--world-size)",
                        self.url
                    ))
                })?;
                (host, port, rank, world, num(ENV_LOCAL_RANK)?)
            }
            DistUrl::Env => {
                let host = env(ENV_MASTER_ADDR)
                    .filter(|h| !h.trim().is_empty())
                    .ok_or_else(|| DistributedError::Env {
                        name: ENV_MASTER_ADDR.into(),
                        reason: "not set (env:// needs the host of rank 0)".into(),
                    })?;
                let port_s = env(ENV_MASTER_PORT).ok_or_else(|| DistributedError::Env {
                    name: ENV_MASTER_PORT.into(),
                    reason: "not set (env:// needs the port rank 0 listens on)".into(),
                })?;
                let port = match port_s.trim().parse::<u16>() {
                    Ok(p) if p != 0 => p,
                    _ => {
                        return Err(DistributedError::Env {
                            name: ENV_MASTER_PORT.into(),
                            reason: format!("`{port_s}` is not a port in 1..=65535"),
                        });
                    }
                };
                let rank = match self.rank {
                    Some(r) => r,
                    None => required(ENV_RANK, num(ENV_RANK)?, "--rank")?,
                };
                let world = match self.world_size {
                    Some(w) => w,
                    None => required(ENV_WORLD_SIZE, num(ENV_WORLD_SIZE)?, "--world-size")?,
                };
                let host = host.trim();
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                (host.to_string(), port, rank, world, num(ENV_LOCAL_RANK)?)
            }
        };
        check_rank(rank, world_size)?;
        Ok(Rendezvous {
            host,
            port,
            rank,
            world_size,
            local_rank,
            timeout: self.timeout,
            token: self.token.clone(),
        })
    }
}

/// A resolved rendezvous: where rank 0 listens and who this process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Host of rank 0.
    pub host: String,
    /// Port rank 0 listens on.
    pub port: u16,
    /// Global rank of this process.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this node (GPU index), if known (`LOCAL_RANK`).
    pub local_rank: Option<usize>,
    /// Timeout of the rendezvous and of every collective.
    pub timeout: Duration,
    /// Shared secret of the rendezvous, if any.
    pub token: Option<DistToken>,
}

impl Rendezvous {
    /// Whether rank 0 of this rendezvous listens on every interface (its host is not a
    /// loopback address), which is when a token matters.
    pub fn listens_publicly(&self) -> bool {
        use std::net::ToSocketAddrs;
        match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(mut addrs) => addrs.next().is_some_and(|a| !a.ip().is_loopback()),
            Err(_) => true,
        }
    }

    /// `host:port` as text (IPv6 in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `rank < world_size` and `world_size >= 1`, or an error saying which is wrong.
pub fn check_rank(rank: usize, world_size: usize) -> Result<()> {
    if world_size == 0 {
        return Err(DistributedError::InvalidConfig(
            "world size must be at least 1".into(),
        ));
    }
    if rank >= world_size {
        return Err(DistributedError::InvalidConfig(format!(
            "rank {rank} is not below the world size {world_size} (ranks are 0..{})",
            world_size - 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn parses_urls() {
        assert_eq!(
            DistUrl::parse("tcp://localhost:10001").unwrap(),
            DistUrl::Tcp {
                host: "localhost".into(),
                port: 10001
            }
        );
        assert_eq!(
            DistUrl::parse("tcp://[::1]:29500").unwrap(),
            DistUrl::Tcp {
                host: "::1".into(),
                port: 29500
            }
        );
        assert_eq!(DistUrl::parse("env://").unwrap(), DistUrl::Env);
        assert_eq!(
            DistUrl::parse("tcp://[::1]:29500").unwrap().to_string(),
            "tcp://[::1]:29500"
        );
        for bad in [
            "",
            "localhost:1",
            "tcp://",
            "tcp://host",
            "tcp://:80",
            "tcp://host:0",
            "tcp://host:70000",
            "tcp://host:x",
            "tcp://::1:80",
            "tcp://[::1]80",
            "file:///tmp/x",
            "tcp://h:1/path",
            "env://x",
        ] {
            assert!(
                matches!(
                    DistUrl::parse(bad),
                    Err(DistributedError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_rendezvous_reads_torchrun_variables() {
        let env = env_of(&[
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("RANK", "9"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
        ]);
        let r = RendezvousConfig::new("env://").resolve_with(&env).unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.rank, r.world_size, r.local_rank),
            ("10.0.0.1", 29500, 9, 16, Some(1))
        );
        // explicit values win
        let r = RendezvousConfig::new("env://")
            .with_rank(3)
            .resolve_with(&env)
            .unwrap();
        assert_eq!(r.rank, 3);
    }

    #[test]
    fn env_rendezvous_errors() {
        let cfg = RendezvousConfig::new("env://");
        let e = cfg.resolve_with(env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        let e = cfg
            .resolve_with(env_of(&[("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]))
            .unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
        let e = cfg
            .resolve_with(env_of(&[("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]))
            .unwrap_err();
        assert!(e.to_string().contains("RANK"), "{e}");
        let e = cfg
            .resolve_with(env_of(&[
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
                ("RANK", "-1"),
                ("WORLD_SIZE", "2"),
            ]))
            .unwrap_err();
        assert!(e.to_string().contains("RANK"), "{e}");
        let e = cfg
            .resolve_with(env_of(&[
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
                ("RANK", "2"),
                ("WORLD_SIZE", "2"),
            ]))
            .unwrap_err();
        assert!(matches!(e, DistributedError::InvalidConfig(_)), "{e}");
    }

    #[test]
    fn tcp_rendezvous_needs_rank_and_world() {
        let cfg = RendezvousConfig::new("tcp://127.0.0.1:23456");
        assert!(cfg.resolve_with(env_of(&[])).is_err());
        assert!(cfg.clone().with_rank(0).resolve_with(env_of(&[])).is_err());
        let r = cfg
            .clone()
            .with_rank(1)
            .with_world_size(2)
            .resolve_with(env_of(&[]))
            .unwrap();
        assert_eq!(r.addr(), "127.0.0.1:23456");
        assert!(matches!(
            cfg.with_rank(2)
                .with_world_size(2)
                .resolve_with(env_of(&[])),
            Err(DistributedError::InvalidConfig(_))
        ));
        assert!(check_rank(0, 0).is_err());
    }
}
