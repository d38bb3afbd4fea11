//! [`TcpGroup`]: ranks as OS processes, connected in a star through rank 0 over TCP.
//!
//! Rank 0 listens on the rendezvous port, accepts the other `world - 1` ranks, checks their
//! hello (protocol version, rank, world size) and welcomes them all at once. A collective is one
//! request from every rank to rank 0 and one response back: rank 0 checks that all ranks called
//! the same collective with the same sizes, computes the result (reductions in rank order) and
//! sends it out. This is the CPU wire, and the store that hands out the NCCL unique id for the
//! GPU backend; it is not meant to move GPU gradients.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{DistributedError, Result};
use crate::group::{OpHeader, OpKind, ProcessGroup, ReduceOp, check_root, reduce_into, validate};
use crate::rendezvous::{DistToken, Rendezvous, RendezvousConfig, check_rank};

const MAGIC: u32 = 0x5353_4c44; // "SSLD"
/// 2: the hello carries a token flag and a nonce, for the optional challenge-response.
const PROTOCOL_VERSION: u32 = 2;
/// Bytes of a hello: magic, version, rank, world, local rank, token flag, nonce.
const HELLO_LEN: usize = 32 + 1 + NONCE_LEN;
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
/// Status byte of rank 0's answer to a hello: welcome, error, or (with a token) a challenge.
const STATUS_WELCOME: u8 = 0;
const STATUS_ERROR: u8 = 1;
const STATUS_CHALLENGE: u8 = 2;
const NO_LOCAL_RANK: u64 = u64::MAX;
/// Longest error message accepted from a peer.
const MAX_ERROR_MESSAGE: usize = 64 << 10;
/// Bytes read per step where the length comes from a peer and is not known in advance: the
/// buffer grows only as data actually arrives, so a forged length allocates nothing.
const READ_CHUNK: usize = 1 << 20;

/// A process group over TCP, one process per rank (star topology through rank 0).
///
/// Create it with [`TcpGroup::connect`] from a `--dist-url` (`tcp://HOST:PORT` or `env://`).
/// Every process calls it with its own rank; rank 0 listens, the others connect (retrying
/// until rank 0 is up or the timeout expires).
///
/// Failure modes (all errors, never an endless wait): rank >= world size
/// ([`DistributedError::InvalidConfig`], before any network traffic); port in use
/// ([`DistributedError::Bind`]); processes that disagree on the world size
/// ([`DistributedError::WorldSizeMismatch`] on both sides); two processes with the same rank
/// ([`DistributedError::DuplicateRank`]); a rank that never arrives
/// ([`DistributedError::Timeout`]); a rank that dies mid-collective
/// ([`DistributedError::PeerGone`] on the others, as soon as its sockets close).
pub struct TcpGroup {
    rank: usize,
    world: usize,
    timeout: Duration,
    addr: String,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Rank 0: streams of ranks 1..world (index = rank - 1). Other ranks: the stream to rank 0.
    streams: Vec<TcpStream>,
    aborted: Option<String>,
}

impl std::fmt::Debug for TcpGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world)
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TcpGroup {
    /// Resolves `config` (see [`RendezvousConfig`]) and joins the group.
    pub fn connect(config: &RendezvousConfig) -> Result<TcpGroup> {
        TcpGroup::join(&config.resolve()?)
    }

    /// Joins the group described by a resolved rendezvous.
    pub fn join(rdv: &Rendezvous) -> Result<TcpGroup> {
        check_rank(rdv.rank, rdv.world_size)?;
        if rdv.timeout.is_zero() {
            return Err(DistributedError::InvalidConfig(
                "the timeout must be positive".into(),
            ));
        }
        let streams = if rdv.world_size == 1 {
            Vec::new()
        } else if rdv.rank == 0 {
            serve_rendezvous(rdv)?
        } else {
            vec![join_rendezvous(rdv)?]
        };
        Ok(TcpGroup {
            rank: rdv.rank,
            world: rdv.world_size,
            timeout: rdv.timeout,
            addr: rdv.addr(),
            inner: Mutex::new(Inner {
                streams,
                aborted: None,
            }),
        })
    }

    /// `host:port` of rank 0.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one collective; returns this rank's result bytes.
    fn collective(&self, header: OpHeader, payload: &[u8]) -> Result<Vec<u8>> {
        let mut inner = self.lock();
        if let Some(msg) = &inner.aborted {
            return Err(DistributedError::Aborted(msg.clone()));
        }
        let res = if self.world == 1 {
            combine(&[header], vec![payload.to_vec()], 1)
        } else if self.rank == 0 {
            self.root_collective(&mut inner, header, payload)
        } else {
            self.peer_collective(&mut inner, header, payload)
        };
        if let Err(e) = &res
            && e.is_fatal()
            && inner.aborted.is_none()
        {
            inner.aborted = Some(e.to_string());
            // Closing the sockets tells every peer at once instead of after its timeout.
            for s in &inner.streams {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
        res
    }

    fn root_collective(
        &self,
        inner: &mut Inner,
        header: OpHeader,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        let mut headers = vec![header];
        let mut payloads = vec![payload.to_vec()];
        for (i, s) in inner.streams.iter_mut().enumerate() {
            let rank = i + 1;
            match read_request(s, deadline, self.timeout, rank, header) {
                Ok((h, p)) => {
                    headers.push(h);
                    payloads.push(p);
                }
                Err(e) => {
                    // Tell the ranks that did arrive why this collective failed.
                    let short = Instant::now() + Duration::from_millis(500);
                    for (j, other) in inner.streams.iter_mut().enumerate() {
                        if j != i {
                            let _ = write_error(other, &e, short, self.timeout);
                        }
                    }
                    return Err(e);
                }
            }
        }
        let result = validate(&headers).and_then(|_| combine(&headers, payloads, self.world));
        match result {
            Err(e) => {
                for s in inner.streams.iter_mut() {
                    write_error(s, &e, deadline, self.timeout)?;
                }
                Err(e)
            }
            Ok(body) => {
                for (i, s) in inner.streams.iter_mut().enumerate() {
                    write_ok(s, &body, deadline, self.timeout, i + 1)?;
                }
                Ok(body)
            }
        }
    }

    fn peer_collective(
        &self,
        inner: &mut Inner,
        header: OpHeader,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        let s = &mut inner.streams[0];
        let deadline = Instant::now() + self.timeout;
        let (kind, param) = header.kind.encode();
        let mut msg = Vec::with_capacity(25 + payload.len());
        msg.push(kind);
        msg.extend_from_slice(&param.to_le_bytes());
        msg.extend_from_slice(&(header.len as u64).to_le_bytes());
        msg.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        msg.extend_from_slice(payload);
        let ctx = |what: &str| format!("rank {} {what} rank 0 in {}", self.rank, header.kind);
        write_deadline(s, &msg, deadline, self.timeout, &ctx("sending to"))?;
        // Rank 0 waits up to the timeout for the slowest rank and then reports why; wait a bit
        // longer than that so the report, not our own timeout, is what the user sees.
        let grace = (self.timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(10));
        let deadline = Instant::now() + self.timeout + grace;
        let expected = expected_result_bytes(header, self.world);
        read_response(s, deadline, self.timeout, expected, &ctx("waiting for"))
    }
}

/// The result bytes every rank receives.
fn combine(headers: &[OpHeader], payloads: Vec<Vec<u8>>, world: usize) -> Result<Vec<u8>> {
    let kind = headers[0].kind;
    if matches!(kind, OpKind::AllReduce(_) | OpKind::AllGather) {
        let want = 4 * headers[0].len;
        if let Some((rank, p)) = payloads.iter().enumerate().find(|(_, p)| p.len() != want) {
            return Err(DistributedError::Protocol(format!(
                "rank {rank} sent {} bytes for {} values in {kind}",
                p.len(),
                headers[0].len
            )));
        }
    }
    Ok(match kind {
        OpKind::AllReduce(op) => {
            let parts: Vec<Vec<f32>> = payloads.iter().map(|p| bytes_to_f32(p)).collect();
            let mut out = vec![0.0f32; headers[0].len];
            reduce_into(&mut out, parts.iter().map(|p| &p[..]), op, world);
            f32_to_bytes(&out)
        }
        OpKind::AllGather => payloads.concat(),
        OpKind::Broadcast { root } | OpKind::BroadcastBytes { root } => {
            let want = match kind {
                OpKind::Broadcast { .. } => 4 * headers[root].len,
                _ => headers[root].len,
            };
            if payloads[root].len() != want {
                return Err(DistributedError::Protocol(format!(
                    "root {root} sent {} bytes in {kind}, announced {want}",
                    payloads[root].len()
                )));
            }
            let mut payloads = payloads;
            std::mem::take(&mut payloads[root])
        }
        OpKind::AllGatherBytes => {
            let mut out = Vec::new();
            for p in &payloads {
                out.extend_from_slice(&(p.len() as u64).to_le_bytes());
                out.extend_from_slice(p);
            }
            out
        }
        OpKind::Barrier => Vec::new(),
    })
}

impl ProcessGroup for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let header = OpHeader {
            kind: OpKind::AllReduce(op),
            len: buf.len(),
        };
        let out = self.collective(header, &f32_to_bytes(buf))?;
        copy_f32(&out, buf)
    }

    fn all_gather(&self, input: &[f32]) -> Result<Vec<f32>> {
        let header = OpHeader {
            kind: OpKind::AllGather,
            len: input.len(),
        };
        let out = self.collective(header, &f32_to_bytes(input))?;
        if out.len() != 4 * input.len() * self.world {
            return Err(DistributedError::Protocol(format!(
                "all_gather returned {} bytes, expected {}",
                out.len(),
                4 * input.len() * self.world
            )));
        }
        Ok(bytes_to_f32(&out))
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.world, "broadcast")?;
        let header = OpHeader {
            kind: OpKind::Broadcast { root },
            len: buf.len(),
        };
        let payload = if self.rank == root {
            f32_to_bytes(buf)
        } else {
            Vec::new()
        };
        let out = self.collective(header, &payload)?;
        copy_f32(&out, buf)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, self.world, "broadcast_bytes")?;
        let header = OpHeader {
            kind: OpKind::BroadcastBytes { root },
            len: bytes.len(),
        };
        let payload = if self.rank == root {
            bytes.clone()
        } else {
            Vec::new()
        };
        *bytes = self.collective(header, &payload)?;
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let header = OpHeader {
            kind: OpKind::AllGatherBytes,
            len: bytes.len(),
        };
        let out = self.collective(header, bytes)?;
        let mut parts = Vec::with_capacity(self.world);
        let mut rest = &out[..];
        for _ in 0..self.world {
            let bad = || DistributedError::Protocol("truncated all_gather_bytes result".into());
            let (len, tail) = rest.split_at_checked(8).ok_or_else(bad)?;
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
            let (part, tail) = tail.split_at_checked(len).ok_or_else(bad)?;
            parts.push(part.to_vec());
            rest = tail;
        }
        Ok(parts)
    }

    fn barrier(&self) -> Result<()> {
        let header = OpHeader {
            kind: OpKind::Barrier,
            len: 0,
        };
        self.collective(header, &[]).map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------
// rendezvous

fn bind_addr(rdv: &Rendezvous) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (rdv.host.as_str(), rdv.port)
        .to_socket_addrs()
        .map_err(|e| DistributedError::InvalidUrl {
            url: format!("tcp://{}", rdv.addr()),
            reason: format!("cannot resolve host `{}`: {e}", rdv.host),
        })?
        .collect();
    let first = addrs.first().ok_or_else(|| DistributedError::InvalidUrl {
        url: format!("tcp://{}", rdv.addr()),
        reason: format!("host `{}` resolves to no address", rdv.host),
    })?;
    // As PyTorch's TCPStore: listen on every interface, unless the rendezvous is on loopback
    // (single-node runs and tests stay private to the machine).
    Ok(if first.ip().is_loopback() {
        *first
    } else if first.is_ipv4() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), rdv.port)
    } else {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), rdv.port)
    })
}

/// Rank 0: listen, accept and check every other rank, then welcome them all.
fn serve_rendezvous(rdv: &Rendezvous) -> Result<Vec<TcpStream>> {
    let addr = bind_addr(rdv)?;
    let listener = TcpListener::bind(addr).map_err(|source| DistributedError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| DistributedError::io("rendezvous: configure listener", e))?;
    let deadline = Instant::now() + rdv.timeout;
    let mut peers: Vec<Option<TcpStream>> = (1..rdv.world_size).map(|_| None).collect();
    let mut joined = 0;
    let mut refused: Vec<String> = Vec::new();
    let fail = |peers: &mut Vec<Option<TcpStream>>, e: DistributedError| {
        let short = Instant::now() + Duration::from_millis(500);
        for s in peers.iter_mut().flatten() {
            let _ = write_reject(s, &e, short, rdv.timeout);
        }
        e
    };
    while joined < rdv.world_size - 1 {
        let (mut stream, from) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = peers
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.is_none())
                        .map(|(i, _)| i + 1)
                        .collect();
                    let refusals = match refused.len() {
                        0 => String::new(),
                        n => format!("; {n} connection(s) refused, first: {}", refused[0]),
                    };
                    let e = DistributedError::timeout(
                        format!(
                            "rank 0 waited at {} for ranks {missing:?} of {} to join{refusals}",
                            rdv.addr(),
                            rdv.world_size
                        ),
                        rdv.timeout,
                    );
                    return Err(fail(&mut peers, e));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                return Err(fail(
                    &mut peers,
                    DistributedError::io("rendezvous: accept", e),
                ));
            }
        };
        let setup = stream
            .set_nonblocking(false)
            .and_then(|_| stream.set_nodelay(true));
        if setup.is_err() {
            continue;
        }
        // A connection that does not speak the protocol within a few seconds is dropped; it is
        // not one of ours (a port scanner, a stale client) and must not stall the rendezvous.
        let hello_deadline = deadline.min(Instant::now() + Duration::from_secs(5));
        let hello = match read_hello(&mut stream, hello_deadline, rdv.timeout) {
            Ok(h) => h,
            Err(_) => continue,
        };
        if let Err(e) = admit(&mut stream, &hello, rdv, from, hello_deadline) {
            let _ = write_reject(&mut stream, &e, hello_deadline, rdv.timeout);
            if rdv.token.is_some() {
                // With a token nothing a process says before it proves it holds the token may
                // end the rendezvous: refuse this connection, keep waiting for the real ranks.
                refused.push(format!("{from} claiming rank {}: {e}", hello.rank));
                continue;
            }
            return Err(fail(&mut peers, e));
        }
        if hello.world != rdv.world_size as u64 {
            let e = DistributedError::WorldSizeMismatch(format!(
                "rank {} ({from}) has world size {}, rank 0 has {}",
                hello.rank, hello.world, rdv.world_size
            ));
            let _ = write_reject(&mut stream, &e, hello_deadline, rdv.timeout);
            return Err(fail(&mut peers, e));
        }
        let rank = hello.rank as usize;
        if rank == 0 || rank >= rdv.world_size {
            let e = DistributedError::InvalidConfig(format!(
                "a process at {from} joined as rank {rank}, which is not in 1..{} of world size {}",
                rdv.world_size, rdv.world_size
            ));
            let _ = write_reject(&mut stream, &e, hello_deadline, rdv.timeout);
            return Err(fail(&mut peers, e));
        }
        if peers[rank - 1].is_some() {
            let e = DistributedError::DuplicateRank(format!(
                "two processes joined as rank {rank} (the second from {from})"
            ));
            let _ = write_reject(&mut stream, &e, hello_deadline, rdv.timeout);
            return Err(fail(&mut peers, e));
        }
        peers[rank - 1] = Some(stream);
        joined += 1;
    }
    drop(listener);
    let mut streams: Vec<TcpStream> = peers.into_iter().flatten().collect();
    let welcome_deadline = Instant::now() + rdv.timeout;
    for (i, s) in streams.iter_mut().enumerate() {
        write_deadline(
            s,
            &[0u8],
            welcome_deadline,
            rdv.timeout,
            &format!("rank 0 welcoming rank {}", i + 1),
        )?;
    }
    Ok(streams)
}

/// Ranks 1..: connect to rank 0 (retrying until it listens), say hello, wait for the welcome.
fn join_rendezvous(rdv: &Rendezvous) -> Result<TcpStream> {
    let deadline = Instant::now() + rdv.timeout;
    let mut last_err = String::from("no attempt");
    let mut stream = loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(DistributedError::timeout(
                format!(
                    "rank {} could not reach rank 0 at {} (last error: {last_err})",
                    rdv.rank,
                    rdv.addr()
                ),
                rdv.timeout,
            ));
        }
        let addrs: Vec<SocketAddr> = match (rdv.host.as_str(), rdv.port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last_err = format!("cannot resolve `{}`: {e}", rdv.host);
                Vec::new()
            }
        };
        let mut connected = None;
        for a in addrs {
            let wait = (deadline - now).min(Duration::from_secs(2));
            match TcpStream::connect_timeout(&a, wait.max(Duration::from_millis(1))) {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        if let Some(s) = connected {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    stream
        .set_nodelay(true)
        .map_err(|e| DistributedError::io("rendezvous: configure socket", e))?;
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(&MAGIC.to_le_bytes());
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    hello.extend_from_slice(&(rdv.rank as u64).to_le_bytes());
    hello.extend_from_slice(&(rdv.world_size as u64).to_le_bytes());
    hello.extend_from_slice(
        &rdv.local_rank
            .map_or(NO_LOCAL_RANK, |l| l as u64)
            .to_le_bytes(),
    );
    hello.push(u8::from(rdv.token.is_some()));
    hello.extend_from_slice(&nonce);
    let ctx = format!("rank {} joining rank 0 at {}", rdv.rank, rdv.addr());
    write_deadline(&mut stream, &hello, deadline, rdv.timeout, &ctx)?;
    // Rank 0 answers once every rank has joined (or with the reason it gives up); with a token
    // it first sends a challenge.
    let grace = Duration::from_secs(2);
    let read_status = |stream: &mut TcpStream| -> Result<u8> {
        let mut status = [0u8; 1];
        read_deadline(stream, &mut status, deadline + grace, rdv.timeout, &ctx).map_err(
            |e| match e {
                DistributedError::PeerGone(_) => DistributedError::Rejected(format!(
                    "rank 0 at {} closed the connection during rendezvous (another rank failed \
                     to join, or rank 0 exited)",
                    rdv.addr()
                )),
                other => other,
            },
        )?;
        Ok(status[0])
    };
    let mut status = read_status(&mut stream)?;
    if status == STATUS_CHALLENGE {
        answer_challenge(&mut stream, rdv, &hello, deadline + grace, &ctx)?;
        status = read_status(&mut stream)?;
    }
    match status {
        STATUS_WELCOME => Ok(stream),
        STATUS_ERROR => Err(read_error(
            &mut stream,
            deadline + grace,
            rdv.timeout,
            &ctx,
        )?),
        x => Err(DistributedError::Protocol(format!(
            "rank 0 answered the hello with status {x}"
        ))),
    }
}

/// The joining rank's side of the token check: verify rank 0's proof, send its own.
fn answer_challenge(
    stream: &mut TcpStream,
    rdv: &Rendezvous,
    hello: &[u8],
    deadline: Instant,
    ctx: &str,
) -> Result<()> {
    let mut challenge = [0u8; NONCE_LEN + MAC_LEN];
    read_deadline(stream, &mut challenge, deadline, rdv.timeout, ctx)?;
    let Some(token) = &rdv.token else {
        return Err(DistributedError::Rejected(format!(
            "rank 0 at {} requires a rendezvous token (--dist-token / MHCL_DIST_TOKEN) and \
             rank {} has none",
            rdv.addr(),
            rdv.rank
        )));
    };
    let (server_nonce, server_mac) = challenge.split_at(NONCE_LEN);
    if !verify_mac(token, ROLE_SERVER, hello, server_nonce, server_mac) {
        return Err(DistributedError::Rejected(format!(
            "the process at {} could not prove it holds rank {}'s rendezvous token: the tokens \
             differ, or another program listens on that port",
            rdv.addr(),
            rdv.rank
        )));
    }
    let proof = mac(token, ROLE_CLIENT, hello, server_nonce);
    write_deadline(stream, &proof, deadline, rdv.timeout, ctx)
}

const ROLE_SERVER: &[u8] = b"ssl-distributed rendezvous v2: rank 0";
const ROLE_CLIENT: &[u8] = b"ssl-distributed rendezvous v2: joining rank";

/// HMAC-SHA256 with the token over `role || hello || server_nonce` (the hello holds the joining
/// rank's nonce, rank and world size).
fn keyed(token: &DistToken, role: &[u8], hello: &[u8], server_nonce: &[u8]) -> Hmac<Sha256> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(token.bytes()).expect("HMAC takes keys of any length");
    m.update(role);
    m.update(hello);
    m.update(server_nonce);
    m
}

fn mac(token: &DistToken, role: &[u8], hello: &[u8], server_nonce: &[u8]) -> [u8; MAC_LEN] {
    keyed(token, role, hello, server_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a MAC in constant time.
fn verify_mac(
    token: &DistToken,
    role: &[u8],
    hello: &[u8],
    server_nonce: &[u8],
    got: &[u8],
) -> bool {
    keyed(token, role, hello, server_nonce)
        .verify_slice(got)
        .is_ok()
}

/// Rank 0's checks of a hello before the rank is counted: the protocol version, then the
/// token (both have one and the peer proves it, or neither has one).
fn admit(
    stream: &mut TcpStream,
    hello: &Hello,
    rdv: &Rendezvous,
    from: SocketAddr,
    deadline: Instant,
) -> Result<()> {
    if hello.version != PROTOCOL_VERSION {
        return Err(DistributedError::Rejected(format!(
            "{from} speaks protocol version {}, rank 0 speaks {PROTOCOL_VERSION} \
             (mixed versions of ssl-distributed)",
            hello.version
        )));
    }
    match (&rdv.token, hello.has_token) {
        (None, false) => Ok(()),
        (None, true) => Err(DistributedError::Rejected(format!(
            "rank {} ({from}) has a rendezvous token but rank 0 has none: give every rank the \
             same --dist-token / MHCL_DIST_TOKEN",
            hello.rank
        ))),
        (Some(_), false) => Err(DistributedError::Rejected(format!(
            "a process at {from} (rank {}) has no rendezvous token; rank 0 requires one \
             (--dist-token / MHCL_DIST_TOKEN)",
            hello.rank
        ))),
        (Some(token), true) => {
            let server_nonce: [u8; NONCE_LEN] = rand::random();
            let mut challenge = vec![STATUS_CHALLENGE];
            challenge.extend_from_slice(&server_nonce);
            challenge.extend_from_slice(&mac(token, ROLE_SERVER, &hello.bytes, &server_nonce));
            let ctx = format!("rank 0 challenging {from}");
            write_deadline(stream, &challenge, deadline, rdv.timeout, &ctx)?;
            let mut proof = [0u8; MAC_LEN];
            read_deadline(stream, &mut proof, deadline, rdv.timeout, &ctx)?;
            if verify_mac(token, ROLE_CLIENT, &hello.bytes, &server_nonce, &proof) {
                Ok(())
            } else {
                Err(DistributedError::Rejected(format!(
                    "authentication failed: the process at {from} (rank {}) does not hold rank \
                     0's rendezvous token",
                    hello.rank
                )))
            }
        }
    }
}

struct Hello {
    version: u32,
    rank: u64,
    world: u64,
    has_token: bool,
    /// The hello as sent (what the token's MACs cover).
    bytes: Vec<u8>,
}

fn read_hello(s: &mut TcpStream, deadline: Instant, timeout: Duration) -> Result<Hello> {
    let mut buf = vec![0u8; HELLO_LEN];
    read_deadline(
        s,
        &mut buf[..32],
        deadline,
        timeout,
        "rank 0 reading a hello",
    )?;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(&buf, 0) != MAGIC {
        return Err(DistributedError::Protocol("bad magic in hello".into()));
    }
    let version = u32_at(&buf, 4);
    if version == PROTOCOL_VERSION {
        read_deadline(
            s,
            &mut buf[32..],
            deadline,
            timeout,
            "rank 0 reading a hello",
        )?;
    } else {
        // an older peer sent only the 32 bytes of version 1: enough to name its version
        buf.truncate(32);
    }
    Ok(Hello {
        version,
        rank: u64_at(&buf, 8),
        world: u64_at(&buf, 16),
        has_token: buf.get(32) == Some(&1),
        bytes: buf,
    })
}

// ---------------------------------------------------------------------------------------------
// messages

/// The payload bytes a request header implies (the sender's own sizes).
fn request_bytes(kind: OpKind, len: usize, rank: usize) -> Option<u64> {
    let len = len as u64;
    match kind {
        OpKind::AllReduce(_) | OpKind::AllGather => len.checked_mul(4),
        OpKind::Broadcast { root } => Some(if rank == root { len.checked_mul(4)? } else { 0 }),
        OpKind::BroadcastBytes { root } => Some(if rank == root { len } else { 0 }),
        OpKind::AllGatherBytes => Some(len),
        OpKind::Barrier => Some(0),
    }
}

/// The result bytes a rank expects back for its own `header`: exact for the collectives whose
/// sizes every rank knows, `None` for the byte collectives, whose sizes only their senders
/// know.
fn expected_result_bytes(header: OpHeader, world: usize) -> Option<u64> {
    let values = header.len as u64;
    match header.kind {
        OpKind::AllReduce(_) | OpKind::Broadcast { .. } => values.checked_mul(4),
        OpKind::AllGather => values.checked_mul(4 * world as u64),
        OpKind::Barrier => Some(0),
        OpKind::BroadcastBytes { .. } | OpKind::AllGatherBytes => None,
    }
}

/// Rank 0 reads rank `rank`'s request for the collective rank 0 itself called (`own`).
///
/// Lengths are checked before anything is allocated: the announced payload must be what the
/// request's own header implies (else a protocol error naming the rank), and a payload whose
/// size differs from rank 0's is read and dropped in small pieces (the mismatch is then
/// reported by `validate`, and the group stays usable). Byte collectives, whose sizes rank 0
/// cannot know, are read in pieces as the data arrives.
fn read_request(
    s: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
    rank: usize,
    own: OpHeader,
) -> Result<(OpHeader, Vec<u8>)> {
    let ctx = format!("rank 0 waiting for rank {rank} in {}", own.kind);
    let mut head = [0u8; 25];
    read_deadline(s, &mut head, deadline, timeout, &ctx)?;
    let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
    let kind = OpKind::decode(head[0], u64_at(1)).ok_or_else(|| {
        DistributedError::Protocol(format!(
            "rank {rank} sent an unknown collective {}",
            head[0]
        ))
    })?;
    let len = usize::try_from(u64_at(9))
        .map_err(|_| DistributedError::Protocol(format!("rank {rank} sent a huge length")))?;
    let payload_len = u64_at(17);
    if request_bytes(kind, len, rank) != Some(payload_len) {
        return Err(DistributedError::Protocol(format!(
            "rank {rank} announced {payload_len} bytes for {kind} of length {len}"
        )));
    }
    let header = OpHeader { kind, len };
    let payload = if kind != own.kind || (kind.same_len() && len != own.len) {
        drain(s, payload_len, deadline, timeout, &ctx)?;
        Vec::new()
    } else if kind.same_len() {
        let mut payload = vec![0u8; payload_len as usize];
        read_deadline(s, &mut payload, deadline, timeout, &ctx)?;
        payload
    } else {
        read_growing(s, payload_len, deadline, timeout, &ctx)?
    };
    Ok((header, payload))
}

/// Reads `len` bytes of unknown plausibility: the buffer grows as they arrive.
fn read_growing(
    s: &mut TcpStream,
    len: u64,
    deadline: Instant,
    timeout: Duration,
    ctx: &str,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(READ_CHUNK as u64) as usize;
        let start = out.len();
        out.resize(start + n, 0);
        read_deadline(s, &mut out[start..], deadline, timeout, ctx)?;
        left -= n as u64;
    }
    Ok(out)
}

/// Reads and drops `len` bytes through a small buffer.
fn drain(
    s: &mut TcpStream,
    len: u64,
    deadline: Instant,
    timeout: Duration,
    ctx: &str,
) -> Result<()> {
    let mut buf = vec![0u8; (len.min(READ_CHUNK as u64)) as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        read_deadline(s, &mut buf[..n], deadline, timeout, ctx)?;
        left -= n as u64;
    }
    Ok(())
}

fn write_ok(
    s: &mut TcpStream,
    body: &[u8],
    deadline: Instant,
    timeout: Duration,
    rank: usize,
) -> Result<()> {
    let mut head = [0u8; 9];
    head[1..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let ctx = format!("rank 0 sending a result to rank {rank}");
    write_deadline(s, &head, deadline, timeout, &ctx)?;
    write_deadline(s, body, deadline, timeout, &ctx)
}

/// A rank reads rank 0's answer; `expected` is the result size its own request implies
/// (`None` for the byte collectives, read in pieces as they arrive).
fn read_response(
    s: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
    expected: Option<u64>,
    ctx: &str,
) -> Result<Vec<u8>> {
    let mut status = [0u8; 1];
    read_deadline(s, &mut status, deadline, timeout, ctx)?;
    match status[0] {
        0 => {
            let mut len = [0u8; 8];
            read_deadline(s, &mut len, deadline, timeout, ctx)?;
            let len = u64::from_le_bytes(len);
            match expected {
                Some(want) if want != len => Err(DistributedError::Protocol(format!(
                    "{ctx}: rank 0 announced a result of {len} bytes, expected {want}"
                ))),
                Some(_) => {
                    let mut body = vec![0u8; len as usize];
                    read_deadline(s, &mut body, deadline, timeout, ctx)?;
                    Ok(body)
                }
                None => read_growing(s, len, deadline, timeout, ctx),
            }
        }
        1 => Err(read_error(s, deadline, timeout, ctx)?),
        x => Err(DistributedError::Protocol(format!(
            "rank 0 sent status {x}"
        ))),
    }
}

fn error_code(e: &DistributedError) -> u8 {
    match e {
        DistributedError::SizeMismatch(_) => 1,
        DistributedError::CollectiveMismatch(_) => 2,
        DistributedError::PeerGone(_) => 3,
        DistributedError::Timeout { .. } => 4,
        DistributedError::Aborted(_) => 5,
        DistributedError::WorldSizeMismatch(_) => 6,
        DistributedError::DuplicateRank(_) => 7,
        DistributedError::InvalidConfig(_) => 8,
        _ => 0,
    }
}

fn encode_error(e: &DistributedError) -> Vec<u8> {
    let (msg, millis) = match e {
        DistributedError::Timeout { what, timeout } => (what.clone(), timeout.as_millis() as u64),
        DistributedError::SizeMismatch(m)
        | DistributedError::CollectiveMismatch(m)
        | DistributedError::PeerGone(m)
        | DistributedError::Aborted(m)
        | DistributedError::WorldSizeMismatch(m)
        | DistributedError::DuplicateRank(m)
        | DistributedError::InvalidConfig(m)
        | DistributedError::Rejected(m) => (m.clone(), 0),
        other => (other.to_string(), 0),
    };
    let mut out = vec![1u8, error_code(e)];
    out.extend_from_slice(&millis.to_le_bytes());
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(msg.as_bytes());
    out
}

fn write_error(
    s: &mut TcpStream,
    e: &DistributedError,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    write_deadline(
        s,
        &encode_error(e),
        deadline,
        timeout,
        "rank 0 reporting an error",
    )
}

fn write_reject(
    s: &mut TcpStream,
    e: &DistributedError,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    write_error(s, e, deadline, timeout)
}

/// Reads the error after a status byte 1 and turns it back into the same variant.
fn read_error(
    s: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
    ctx: &str,
) -> Result<DistributedError> {
    let mut head = [0u8; 13];
    read_deadline(s, &mut head, deadline, timeout, ctx)?;
    let millis = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
    if len > MAX_ERROR_MESSAGE {
        return Err(DistributedError::Protocol(format!(
            "{ctx}: the peer announced an error message of {len} bytes (at most {MAX_ERROR_MESSAGE})"
        )));
    }
    let mut msg = vec![0u8; len];
    read_deadline(s, &mut msg, deadline, timeout, ctx)?;
    let msg = String::from_utf8_lossy(&msg).into_owned();
    Ok(match head[0] {
        1 => DistributedError::SizeMismatch(msg),
        2 => DistributedError::CollectiveMismatch(msg),
        3 => DistributedError::PeerGone(msg),
        4 => DistributedError::timeout(msg, Duration::from_millis(millis)),
        5 => DistributedError::Aborted(msg),
        6 => DistributedError::WorldSizeMismatch(msg),
        7 => DistributedError::DuplicateRank(msg),
        8 => DistributedError::InvalidConfig(msg),
        _ => DistributedError::Rejected(msg),
    })
}

// ---------------------------------------------------------------------------------------------
// socket I/O with a deadline

fn remaining(deadline: Instant) -> Option<Duration> {
    let now = Instant::now();
    (now < deadline).then(|| (deadline - now).max(Duration::from_millis(1)))
}

fn classify(e: std::io::Error, ctx: &str) -> DistributedError {
    match e.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::NotConnected => {
            DistributedError::PeerGone(format!("{ctx}: connection closed ({e})"))
        }
        _ => DistributedError::io(ctx, e),
    }
}

fn read_deadline(
    s: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    timeout: Duration,
    ctx: &str,
) -> Result<()> {
    let mut off = 0;
    while off < buf.len() {
        let Some(rem) = remaining(deadline) else {
            return Err(DistributedError::timeout(ctx, timeout));
        };
        s.set_read_timeout(Some(rem))
            .map_err(|e| DistributedError::io(ctx, e))?;
        match s.read(&mut buf[off..]) {
            Ok(0) => {
                return Err(DistributedError::PeerGone(format!(
                    "{ctx}: connection closed (the process exited or was killed)"
                )));
            }
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(classify(e, ctx)),
        }
    }
    Ok(())
}

fn write_deadline(
    s: &mut TcpStream,
    buf: &[u8],
    deadline: Instant,
    timeout: Duration,
    ctx: &str,
) -> Result<()> {
    let mut off = 0;
    while off < buf.len() {
        let Some(rem) = remaining(deadline) else {
            return Err(DistributedError::timeout(ctx, timeout));
        };
        s.set_write_timeout(Some(rem))
            .map_err(|e| DistributedError::io(ctx, e))?;
        match s.write(&buf[off..]) {
            Ok(0) => {
                return Err(DistributedError::PeerGone(format!(
                    "{ctx}: connection closed"
                )));
            }
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(classify(e, ctx)),
        }
    }
    Ok(())
}

fn f32_to_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * x.len());
    for v in x {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn bytes_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

fn copy_f32(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if bytes.len() != 4 * out.len() {
        return Err(DistributedError::Protocol(format!(
            "result has {} bytes for {} values",
            bytes.len(),
            out.len()
        )));
    }
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes(c.try_into().expect("4 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_the_wire_unchanged() {
        for e in [
            DistributedError::SizeMismatch("a".into()),
            DistributedError::CollectiveMismatch("b".into()),
            DistributedError::PeerGone("c".into()),
            DistributedError::timeout("d", Duration::from_millis(1500)),
            DistributedError::WorldSizeMismatch("e".into()),
            DistributedError::DuplicateRank("f".into()),
            DistributedError::InvalidConfig("g".into()),
        ] {
            let bytes = encode_error(&e);
            let (a, b) = (
                TcpListener::bind("127.0.0.1:0").unwrap(),
                std::thread::spawn(move || bytes),
            );
            let port = a.local_addr().unwrap().port();
            let bytes = b.join().unwrap();
            let mut w = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut r, _) = a.accept().unwrap();
            w.write_all(&bytes).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut status = [0u8];
            read_deadline(&mut r, &mut status, deadline, Duration::from_secs(5), "t").unwrap();
            assert_eq!(status[0], 1);
            let back = read_error(&mut r, deadline, Duration::from_secs(5), "t").unwrap();
            assert_eq!(back.to_string(), e.to_string());
        }
    }

    /// A connected pair of sockets on loopback: (writer side, reader side).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (r, _) = l.accept().unwrap();
        (w, r)
    }

    fn request_head(kind: OpKind, len: u64, payload_len: u64) -> Vec<u8> {
        let (k, param) = kind.encode();
        let mut head = vec![k];
        head.extend_from_slice(&param.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&payload_len.to_le_bytes());
        head
    }

    #[test]
    fn a_payload_length_that_contradicts_its_header_is_refused_before_reading_it() {
        let (mut w, mut r) = socket_pair();
        // 10 values of all_reduce are 40 bytes, not 1 TiB
        w.write_all(&request_head(OpKind::AllReduce(ReduceOp::Sum), 10, 1 << 40))
            .unwrap();
        let own = OpHeader {
            kind: OpKind::AllReduce(ReduceOp::Sum),
            len: 10,
        };
        let t = Instant::now();
        let deadline = t + Duration::from_secs(5);
        let e = read_request(&mut r, deadline, Duration::from_secs(5), 3, own).unwrap_err();
        assert!(matches!(e, DistributedError::Protocol(_)), "{e}");
        assert!(e.to_string().contains("rank 3"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_consistent_but_foreign_size_is_drained_not_allocated() {
        let (mut w, mut r) = socket_pair();
        // a self-consistent header for 2^38 values that rank 0 does not expect; no data follows
        w.write_all(&request_head(
            OpKind::AllReduce(ReduceOp::Sum),
            1 << 38,
            1 << 40,
        ))
        .unwrap();
        let own = OpHeader {
            kind: OpKind::AllReduce(ReduceOp::Sum),
            len: 10,
        };
        let timeout = Duration::from_millis(300);
        let e = read_request(&mut r, Instant::now() + timeout, timeout, 1, own).unwrap_err();
        assert!(matches!(e, DistributedError::Timeout { .. }), "{e}");
    }

    #[test]
    fn a_size_mismatch_is_read_off_so_the_stream_stays_in_step() {
        let (mut w, mut r) = socket_pair();
        let payload = vec![7u8; 16];
        w.write_all(&request_head(OpKind::AllGather, 4, 16))
            .unwrap();
        w.write_all(&payload).unwrap();
        w.write_all(&request_head(OpKind::Barrier, 0, 0)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let t = Duration::from_secs(5);
        let own = OpHeader {
            kind: OpKind::AllGather,
            len: 3,
        };
        let (h, p) = read_request(&mut r, deadline, t, 1, own).unwrap();
        assert_eq!((h.len, p.len()), (4, 0));
        let barrier = OpHeader {
            kind: OpKind::Barrier,
            len: 0,
        };
        let (h, _) = read_request(&mut r, deadline, t, 1, barrier).unwrap();
        assert_eq!(h.kind, OpKind::Barrier);
    }

    #[test]
    fn results_and_error_messages_of_unexpected_size_are_refused() {
        let (mut w, mut r) = socket_pair();
        let mut msg = vec![0u8];
        msg.extend_from_slice(&(1u64 << 40).to_le_bytes());
        w.write_all(&msg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let t = Duration::from_secs(5);
        let e =
            read_response(&mut r, deadline, t, Some(40), "rank 1 waiting for rank 0").unwrap_err();
        assert!(matches!(e, DistributedError::Protocol(_)), "{e}");

        let (mut w, mut r) = socket_pair();
        let mut msg = vec![1u8, 1];
        msg.extend_from_slice(&0u64.to_le_bytes());
        msg.extend_from_slice(&u32::MAX.to_le_bytes());
        w.write_all(&msg).unwrap();
        let e =
            read_response(&mut r, deadline, t, Some(40), "rank 1 waiting for rank 0").unwrap_err();
        assert!(matches!(e, DistributedError::Protocol(_)), "{e}");
    }

    #[global_allocator]
    static ALLOC: ssl_conformance::fuzz::CountingAlloc = ssl_conformance::fuzz::CountingAlloc;

    /// Feeds `bytes` to `read` through a fresh loopback connection whose sender then closes.
    fn through_socket<R>(
        listener: &TcpListener,
        bytes: &[u8],
        read: impl FnOnce(&mut TcpStream) -> Result<R>,
    ) -> std::result::Result<(), String> {
        let mut w = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut r, _) = listener.accept().unwrap();
        let _ = w.write_all(bytes);
        drop(w);
        read(&mut r).map(|_| ()).map_err(|e| e.to_string())
    }

    fn fuzz_config(seed: u64) -> ssl_conformance::fuzz::FuzzConfig {
        ssl_conformance::fuzz::FuzzConfig {
            max_inputs: 3000,
            max_time: Duration::from_secs(6),
            // a message is at most its bytes plus fixed buffers (1 MiB read pieces)
            alloc_fixed: 4 << 20,
            alloc_per_byte: 4,
            slow_input: Duration::from_secs(2),
            seed,
        }
        .with_env_overrides()
    }

    #[test]
    fn rendezvous_readers_refuse_damaged_messages_without_panicking() {
        use ssl_conformance::fuzz::fuzz;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let short = Duration::from_millis(200);
        let rdv = Rendezvous {
            host: "127.0.0.1".into(),
            port: 1,
            rank: 0,
            world_size: 4,
            local_rank: None,
            timeout: short,
            token: Some(DistToken::new("k").unwrap()),
        };
        // a hello with a token flag, then a (wrong) proof
        let mut hello = Vec::new();
        for part in [
            MAGIC.to_le_bytes().to_vec(),
            PROTOCOL_VERSION.to_le_bytes().to_vec(),
        ] {
            hello.extend_from_slice(&part);
        }
        for v in [2u64, 4, NO_LOCAL_RANK] {
            hello.extend_from_slice(&v.to_le_bytes());
        }
        hello.push(1);
        hello.extend_from_slice(&[7u8; NONCE_LEN]);
        hello.extend_from_slice(&[9u8; MAC_LEN]);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let report = fuzz("rendezvous hello", &[hello], &fuzz_config(1), |bytes| {
            through_socket(&listener, bytes, |s| {
                let deadline = Instant::now() + short;
                let h = read_hello(s, deadline, short)?;
                admit(s, &h, &rdv, from, deadline)
            })
        });
        println!("{report}");

        let own = OpHeader {
            kind: OpKind::AllReduce(ReduceOp::Sum),
            len: 64,
        };
        let mut request = request_head(own.kind, 64, 256);
        request.extend_from_slice(&[3u8; 256]);
        let mut gather = request_head(OpKind::AllGatherBytes, 100, 100);
        gather.extend_from_slice(&[5u8; 100]);
        let report = fuzz(
            "collective request",
            &[request, gather],
            &fuzz_config(2),
            |bytes| {
                through_socket(&listener, bytes, |s| {
                    read_request(s, Instant::now() + short, short, 1, own)
                })
            },
        );
        println!("{report}");

        let mut ok = vec![0u8];
        ok.extend_from_slice(&256u64.to_le_bytes());
        ok.extend_from_slice(&[1u8; 256]);
        let err = encode_error(&DistributedError::SizeMismatch("sizes differ".into()));
        let report = fuzz("collective result", &[ok, err], &fuzz_config(3), |bytes| {
            through_socket(&listener, bytes, |s| {
                let expected = if bytes.len() % 2 == 0 {
                    Some(256)
                } else {
                    None
                };
                read_response(s, Instant::now() + short, short, expected, "rank 1")
            })
        });
        println!("{report}");
    }

    #[test]
    fn f32_bytes_round_trip() {
        let x = [1.5f32, -0.0, f32::MAX, 3.25e-7];
        let mut y = [0.0f32; 4];
        copy_f32(&f32_to_bytes(&x), &mut y).unwrap();
        assert_eq!(x, y);
        assert_eq!(bytes_to_f32(&f32_to_bytes(&x)), x.to_vec());
    }
}
