//! `edge`: run the proxy, check a config, or (with no arguments) run a demo.

use std::path::PathBuf;
use std::process::ExitCode;

use edge::config;
use edge::demo;
use edge::logging;
use edge::server::{check_listeners, run, StartOptions};

/// jemalloc instead of glibc's malloc. Measured with bench/ab.sh (4 alternating rounds, medians
/// of requests per CPU-second): pass-through +53%, misses +57%, hits +18 to +28%. Pingora's
/// tasks move between worker threads, so memory freed on one thread was allocated on another:
/// glibc serialised those frees on its arena locks (~4% of pass-through samples waiting on
/// them) and consolidated free chunks on the hot path. mimalloc, tried earlier, made misses
/// slower (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "\
usage: edge -c FILE [-t] [-u] [-d]
       edge                       run a demo: the edge on 127.0.0.1:8080 before a sample origin

  -c, --conf FILE   the YAML config (see conf/edge.yaml)
  -t, --test        check the config and exit: 0 if valid, 1 with every error on stderr
  -u, --upgrade     take over the listening sockets of a running edge (graceful upgrade)
  -d, --daemon      run in the background
  -h, --help        this text
  -V, --version     the version";

fn main() -> ExitCode {
    // A write past the file size limit (RLIMIT_FSIZE) then fails with EFBIG, which the disk
    // tier handles as it handles a full disk, instead of killing the process (nginx does the
    // same).
    // SAFETY: setting a signal's disposition to "ignore" before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let mut conf: Option<PathBuf> = None;
    let (mut test, mut start) = (false, StartOptions::default());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" | "--conf" => match args.next() {
                Some(f) => conf = Some(PathBuf::from(f)),
                None => return usage_error("-c needs a file"),
            },
            "-t" | "--test" => test = true,
            "-u" | "--upgrade" => start.upgrade = true,
            "-d" | "--daemon" => start.daemon = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("edge {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument \"{other}\"")),
        }
    }
    let Some(path) = conf else {
        if test {
            return usage_error("-t needs -c FILE");
        }
        logging::init(log::LevelFilter::Info);
        return run_demo(start);
    };
    let (config, source) = match config::load(&path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "edge: {} error(s) in {}; nothing was started",
                errors.0.len(),
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    if test {
        println!("edge: {} is valid", path.display());
        return ExitCode::SUCCESS;
    }
    logging::init(config.log.level.filter());
    start_checked(config, source, Some(path), start)
}

fn start_checked(
    config: config::Config,
    source: String,
    path: Option<PathBuf>,
    start: StartOptions,
) -> ExitCode {
    if !start.upgrade {
        if let Err(e) = check_listeners(&config) {
            eprintln!("edge: {e}; nothing was started");
            return ExitCode::from(1);
        }
    }
    run(config, source, path, start)
}

fn run_demo(start: StartOptions) -> ExitCode {
    let origin = match demo::start_sample_origin() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("edge: cannot start the sample origin: {e}");
            return ExitCode::from(1);
        }
    };
    let text = demo::DEMO_CONFIG.replace("{DEMO_ORIGIN}", &origin.to_string());
    let config = match config::parse(&text, "conf/demo.yaml (built in)") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "edge demo: proxy on http://127.0.0.1:8080 in front of a sample origin on {origin}\n\
         try (twice, to see Cache-Status go from miss to hit):\n  curl -i http://127.0.0.1:8080/\n  curl -i http://127.0.0.1:8080/static/logo.png\n  \
         curl -s http://127.0.0.1:9090/metrics | grep edge_upstream_requests_total\n\
         stop with Ctrl-C; run your own with: edge -c conf/edge.yaml"
    );
    start_checked(config, text, None, start)
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("edge: {msg}\n{USAGE}");
    ExitCode::from(2)
}
