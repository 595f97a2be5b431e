//! Listening sockets for several workers: each worker accepts on a socket
//! of its own, bound to the same address with `SO_REUSEPORT`, and the
//! kernel spreads new connections over them. With one socket shared by
//! all, every worker would wake for each connection and the first awake
//! would take a whole burst of them, leaving the others idle.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpListener;

/// What tokio's `TcpListener::bind` uses.
const BACKLOG: i32 = 1024;

/// Binds `addr` for `workers` workers: with more than one, with
/// `SO_REUSEPORT`, so that `for_another_worker` can bind the others.
pub async fn bind(addr: SocketAddr, workers: usize) -> io::Result<TcpListener> {
    if workers <= 1 {
        return TcpListener::bind(addr).await;
    }
    // `SO_REUSEPORT` would also let a second proxy, or anything else run
    // by the same user, bind the address and silently take part of its
    // connections. Bound without it first, a taken address fails as usual.
    let probe = TcpListener::bind(addr).await?;
    let addr = probe.local_addr()?;
    drop(probe);
    TcpListener::from_std(reuse_port_listener(addr)?)
}

/// A socket for another worker on the address of `listener`: a sibling in
/// its `SO_REUSEPORT` group when it has one, else the same socket.
pub(super) fn for_another_worker(listener: &TcpListener) -> io::Result<std::net::TcpListener> {
    if SockRef::from(listener).reuse_port()? {
        reuse_port_listener(listener.local_addr()?)
    } else {
        let fd = std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?;
        Ok(std::net::TcpListener::from(fd))
    }
}

fn reuse_port_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `bind` does: a restart need not wait out TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_get_sibling_sockets_and_a_taken_address_still_fails() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let first = bind(loopback, 2).await.expect("bind a free port");
        let addr = first.local_addr().expect("bound");
        let sibling = for_another_worker(&first).expect("a sibling");
        assert_eq!(sibling.local_addr().expect("bound"), addr);
        assert!(SockRef::from(&sibling).reuse_port().expect("getsockopt"));

        let taken = bind(addr, 2).await.expect_err("the address is taken");
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);

        // Bound without SO_REUSEPORT: the workers share the socket itself.
        let plain = TcpListener::bind(loopback).await.expect("bind");
        let shared = for_another_worker(&plain).expect("the same socket");
        assert_eq!(
            shared.local_addr().expect("bound"),
            plain.local_addr().expect("bound")
        );
        assert!(!SockRef::from(&shared).reuse_port().expect("getsockopt"));
    }
}
