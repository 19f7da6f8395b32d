//! A delay line between the edge and a test origin: a network path's round trip on loopback.
//!
//! Every byte (and the close) is delivered `delay` after it arrived, in each direction. The TCP
//! handshake's round trip is charged as well: the edge's connect completes at once (the kernel
//! answers it on loopback), so nothing sent on a new connection reaches the origin before three
//! delays after the accept, as a SYN, its SYN-ACK and the first data segment would take on a
//! real path. A connection opened ahead of need (`keepalive.warm`) has paid that by the time a
//! request uses it; one opened for the request has not. (A fake of the network, since changing
//! loopback's own delay would slow every test running beside it.)

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub struct Relay {
    pub addr: SocketAddr,
}

impl Relay {
    pub fn start(target: SocketAddr, delay: Duration) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let handshake_done = Instant::now() + 2 * delay;
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(client, server, delay, handshake_done));
                thread::spawn(move || pump(s2, c2, delay, Instant::now()));
            }
        });
        Relay { addr }
    }
}

/// Copies `from` to `to`, each chunk leaving `delay` after it came, or after `not_before` if it
/// came earlier.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, not_before: Instant) {
    let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let writer = thread::spawn(move || {
        for (due, chunk) in rx {
            // A delay line: each chunk leaves at its due time.
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).is_err() {
                        break;
                    }
                }
                None => {
                    let _ = to.shutdown(Shutdown::Write);
                    break;
                }
            }
        }
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        let due = |now: Instant| now.max(not_before) + delay;
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send((due(Instant::now()), None));
                break;
            }
            Ok(n) => {
                if tx
                    .send((due(Instant::now()), Some(buf[..n].to_vec())))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}
