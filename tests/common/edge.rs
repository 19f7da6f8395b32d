//! The edge process harness: the real `edge` binary started on a config the test writes (on
//! free loopback ports), signalled, upgraded, reloaded and stopped, with its log, admin
//! listener and metrics at hand; and `edge -t` for config checks.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use super::{free_port, get, temp_path, wait_until, Client, Response};

/// The `edge` binary, running on a config written by the test. Stopped (SIGINT) on drop.
pub struct Edge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// A second listener's address, when the `listen` entries name `{PORT2}`.
    pub addr2: Option<SocketAddr>,
    child: Child,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The `listen`/`admin` lines the test harness adds to every config body.
    header: String,
    /// False for an edge that was started as an upgrade of another: it owns no config file.
    owns_config: bool,
}

/// The edge binary under test: this build's, or `EDGE_TEST_BIN` (to run a test against another
/// build, e.g. to show that a new test fails on the code before a fix).
pub fn edge_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("EDGE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_edge").to_string())
    })
}

impl Edge {
    /// Starts the edge with `body` (the config without `listen`/`admin`, which are added on
    /// free ports) and waits until it accepts connections.
    pub fn start(body: &str) -> Edge {
        Self::start_listening("\"127.0.0.1:{PORT}\"", body)
    }

    /// As `start`, with the `listen` entries written by the test (YAML flow style); `{PORT}`
    /// in them becomes a free port (e.g. a TLS listener: `{address: "127.0.0.1:{PORT}", tls:
    /// ...}`), and `{PORT2}` a second one (`addr2`).
    pub fn start_listening(listen: &str, body: &str) -> Edge {
        Self::start_with(listen, "", body)
    }

    /// As `start_listening`, with more `admin` keys (e.g. `token_file: "..."`).
    pub fn start_with(listen: &str, admin_extra: &str, body: &str) -> Edge {
        Self::start_limited(listen, admin_extra, body, None)
    }

    /// As `start_with`, the process limited to files of `file_size_limit` bytes (RLIMIT_FSIZE:
    /// a write past it fails with EFBIG, as a full disk fails with ENOSPC).
    pub fn start_limited(
        listen: &str,
        admin_extra: &str,
        body: &str,
        file_size_limit: Option<u64>,
    ) -> Edge {
        // A port found free may be taken (by another test's outgoing connection) before the
        // edge binds it; the edge then refuses to start, and we try other ports.
        for _attempt in 0..5 {
            let port = free_port();
            let admin_port = free_port();
            let port2 = listen.contains("{PORT2}").then(free_port);
            let listen = listen
                .replace("{PORT}", &port.to_string())
                .replace("{PORT2}", &port2.unwrap_or(0).to_string());
            let admin_extra = if admin_extra.is_empty() {
                String::new()
            } else {
                format!(", {admin_extra}")
            };
            let header = format!(
                "listen: [{listen}]\nadmin: {{listen: \"127.0.0.1:{admin_port}\"{admin_extra}}}\n"
            );
            let config_path = temp_path("edge.yaml");
            std::fs::write(&config_path, format!("{header}{body}")).unwrap();
            let mut edge = Self::spawn(
                format!("127.0.0.1:{port}").parse().unwrap(),
                format!("127.0.0.1:{admin_port}").parse().unwrap(),
                config_path,
                header,
                false,
                file_size_limit,
            );
            edge.addr2 = port2.map(|p| format!("127.0.0.1:{p}").parse().unwrap());
            let mut exited = false;
            let up = wait_until(Duration::from_secs(20), || {
                exited = matches!(edge.child.try_wait(), Ok(Some(_)));
                exited
                    || (TcpStream::connect(edge.addr).is_ok()
                        && TcpStream::connect(edge.admin).is_ok())
            });
            if exited && edge.log().contains("cannot listen on") {
                continue;
            }
            assert!(up && !exited, "edge did not start; log:\n{}", edge.log());
            return edge;
        }
        panic!("no free ports for the edge after 5 attempts");
    }

    fn spawn(
        addr: SocketAddr,
        admin: SocketAddr,
        config_path: PathBuf,
        header: String,
        upgrade: bool,
        file_size_limit: Option<u64>,
    ) -> Edge {
        let log_path = temp_path("edge.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(edge_bin());
        cmd.arg("-c").arg(&config_path);
        if upgrade {
            cmd.arg("-u");
        }
        if let Some(limit) = file_size_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Edge {
            addr,
            admin,
            addr2: None,
            child,
            config_path,
            log_path,
            header,
            owns_config: !upgrade,
        }
    }

    /// Starts a second edge on the same config with `-u`: it takes over the listening sockets
    /// once this one is told to (SIGQUIT).
    pub fn start_upgrade(&self) -> Edge {
        Self::spawn(
            self.addr,
            self.admin,
            self.config_path.clone(),
            self.header.clone(),
            true,
            None,
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc_kill(self.pid(), sig);
        }
    }

    /// Waits (bounded) for the process to exit; returns whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        wait_until(limit, || matches!(self.child.try_wait(), Ok(Some(_))))
    }

    /// Replaces the config file's body (listen/admin stay as they were).
    pub fn rewrite(&self, body: &str) {
        std::fs::write(&self.config_path, format!("{}{body}", self.header)).unwrap();
    }

    /// POST /reload on the admin listener.
    pub fn reload(&self) -> Response {
        Client::connect(self.admin)
            .send_raw("POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
            .expect("a reload response")
    }

    /// The version of the config in force, from GET /config.
    pub fn config_version(&self) -> String {
        let body = get(self.admin, "admin", "/config").body;
        body.lines()
            .find_map(|l| l.strip_prefix("# version: "))
            .unwrap_or_default()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn get(&self, host: &str, path: &str) -> Response {
        get(self.addr, host, path)
    }

    /// A request on a fresh connection, with extra header lines.
    pub fn request(&self, method: &str, path: &str, headers: &[&str]) -> Response {
        Client::connect(self.addr).request(method, "example.com", path, headers)
    }

    /// POST to the admin listener (reload, purge).
    pub fn admin_post(&self, path: &str) -> Response {
        Client::connect(self.admin)
            .send_raw(&format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
            ))
            .expect("an admin response")
    }

    /// Peak resident memory of the edge process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "admin", "/metrics").body
    }

    /// The value of one sample, e.g. `edge_upstream_requests_total{connection="new",origin="web"}`
    /// (labels in the exposition's alphabetical order); 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }

    /// The sum of `name`'s samples whose labels include every `label="value"` of `having`.
    pub fn metric_sum(&self, name: &str, having: &[&str]) -> f64 {
        let text = self.metrics();
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
            .filter_map(|l| l.split_once("} "))
            .filter(|(labels, _)| {
                let labels: Vec<&str> = labels.split(',').collect();
                having.iter().all(|h| labels.contains(h))
            })
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .sum()
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Drop for Edge {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.signal(2);
        }
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.owns_config {
            let _ = std::fs::remove_file(&self.config_path);
        }
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        } else {
            eprintln!("edge log kept at {}", self.log_path.display());
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Runs `edge -t -c` on config text; returns (exit code, stderr).
pub fn check_config(text: &str) -> (i32, String) {
    let path = temp_path("check.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(edge_bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE"),
    )
}
