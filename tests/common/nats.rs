//! A real `nats-server` (Debian's package, installed by `tests/setup.sh`) with JetStream on
//! loopback, its store in a temp directory, stopped by PID; and `Cut`, a TCP forwarder between
//! one edge and NATS that can sever that edge's link (the edge cut off while NATS and the other
//! edges carry on).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{free_port, temp_path, wait_until};

/// Where Debian puts the server (`/usr/sbin`, not on every user's PATH).
fn nats_bin() -> String {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    "nats-server".to_string()
}

pub struct Nats {
    pub addr: SocketAddr,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Times started, to tell this start's readiness line in the log from earlier ones.
    starts: usize,
}

impl Nats {
    /// Starts a server with JetStream on a free port; waits until it accepts connections.
    pub fn start() -> Nats {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let store = temp_path("nats-store");
        std::fs::create_dir_all(&store).unwrap();
        let mut n = Nats {
            addr,
            log: temp_path("nats.log"),
            store,
            child: None,
            starts: 0,
        };
        n.restart();
        n
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Starts the server again on the same port and store (its streams survive).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(nats_bin())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.addr.port().to_string())
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (tests/setup.sh installs it): {e}",
                    nats_bin()
                )
            });
        self.child = Some(child);
        self.starts += 1;
        let addr = self.addr;
        // The log is appended to across restarts: this start is ready when it says so once more.
        let ready = |log: String| log.matches("Server is ready").count() >= self.starts;
        assert!(
            wait_until(Duration::from_secs(10), || ready(self.log())
                && TcpStream::connect(addr).is_ok()),
            "nats-server did not start:\n{}",
            self.log()
        );
    }

    /// Stops the server (SIGKILL: an outage, not a goodbye) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A forwarder to `target` whose link can be cut: `cut()` closes every connection through it
/// and refuses new ones until `restore()`.
pub struct Cut {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cut {
    pub fn start(target: SocketAddr) -> Cut {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut live = o.lock().unwrap();
                live.push(client.try_clone().unwrap());
                live.push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || copy(client, server));
                thread::spawn(move || copy(s2, c2));
            }
        });
        Cut { addr, cut, open }
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
