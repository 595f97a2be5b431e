//! What the kernel charges for one small message written to a loopback
//! TCP socket: as two slices with `writev` (what tokio does with hyper's
//! head and body), or joined into one buffer and written with `send`
//! (what `small_writes` does). A reader thread drains the other end.

use std::hint::black_box;
use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{criterion_group, criterion_main, Criterion};

/// A response head as hyper writes it, and a two-byte body.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\ndate: Thu, 26 Nov 2026 12:00:00 GMT\r\nx-request-id: 0123456789abcdef\r\n\r\n";
const BODY: &[u8] = b"ok";

/// A connected pair on 127.0.0.1; the far end is read until it closes.
fn loopback() -> (TcpStream, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = listener.local_addr().expect("bound address");
    let reader = std::thread::spawn(move || {
        let (mut far, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        while matches!(far.read(&mut buf), Ok(n) if n > 0) {}
    });
    let near = TcpStream::connect(addr).expect("connect");
    near.set_nodelay(true).expect("TCP_NODELAY");
    (near, reader)
}

fn bench_small_writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("small_write");
    // Alternated within one process, so that both see the same machine.
    let (mut socket, reader) = loopback();
    group.bench_function("writev_two_slices", |b| {
        b.iter(|| {
            let slices = [IoSlice::new(black_box(HEAD)), IoSlice::new(black_box(BODY))];
            socket.write_vectored(&slices).expect("writev")
        })
    });
    group.bench_function("send_joined", |b| {
        b.iter(|| {
            let mut joined = [0u8; 4096];
            joined[..HEAD.len()].copy_from_slice(black_box(HEAD));
            joined[HEAD.len()..HEAD.len() + BODY.len()].copy_from_slice(black_box(BODY));
            socket
                .write(&joined[..HEAD.len() + BODY.len()])
                .expect("send")
        })
    });
    group.finish();
    drop(socket);
    reader.join().expect("reader thread");
}

criterion_group!(benches, bench_small_writes);
criterion_main!(benches);
