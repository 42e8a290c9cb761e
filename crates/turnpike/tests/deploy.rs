//! The files under `deploy/` and the operations guide against the real relay and the real tools:
//! the metrics the dashboard and the alert rules name exist on a live relay's `/metrics`;
//! `promtool` accepts the rules, passes their unit tests and lints the live exposition;
//! `systemd-analyze` verifies the unit with each combination of its XDP and TLS drop-ins; the
//! guide lists every setting `turnpike --help` shows; the example `turnpike.toml` has every key
//! and the relay accepts it, TLS included.
//!
//! A missing tool skips its test, except under CI (`CI` set), where `scripts/setup.sh` has
//! installed it and its absence fails.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Relay;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// Whether `tool` runs; if not, skips (returns false) outside CI and fails under CI.
fn tool_present(tool: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (Debian package {package}); scripts/setup.sh installs it"
        );
        eprintln!("skip: {tool} is not installed (Debian package {package})");
    }
    found
}

/// Runs `command` with `input` on stdin, killing it after 60 s.
fn run(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `turnpike_*` names in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(offset) = text[start..].find("turnpike_") {
        let begin = start + offset;
        let identifier = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
        let mut end = begin + "turnpike_".len();
        while end < bytes.len() && identifier(bytes[end]) {
            end += 1;
        }
        if begin == 0 || !identifier(bytes[begin - 1]) {
            names.insert(text[begin..end].to_owned());
        }
        start = end;
    }
    names
}

/// The metric families a live relay declares (`# TYPE` lines), and the exposition itself.
fn live_families() -> (BTreeSet<String>, String) {
    let relay = Relay::start(&[]);
    let exposition = relay.get_body("/metrics").expect("metrics");
    let families = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect();
    (families, exposition)
}

#[test]
fn the_dashboard_and_the_rules_name_only_metrics_the_relay_exports() {
    let (families, _) = live_families();
    let dashboard = read("deploy/grafana/turnpike.json");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(
        parsed["panels"]
            .as_array()
            .is_some_and(|panels| panels.len() > 10)
    );
    for (file, text) in [
        ("deploy/grafana/turnpike.json", dashboard.clone()),
        (
            "deploy/prometheus/turnpike-rules.yml",
            read("deploy/prometheus/turnpike-rules.yml"),
        ),
        (
            "deploy/prometheus/turnpike-rules.test.yml",
            read("deploy/prometheus/turnpike-rules.test.yml"),
        ),
    ] {
        let used = metric_names(&text);
        assert!(used.len() >= 8, "{file}: only {used:?}");
        let unknown: Vec<&String> = used.difference(&families).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics /metrics does not have: {unknown:?}\n/metrics has {families:?}"
        );
    }
    // Every family is on the dashboard, so a new metric is not forgotten there.
    let on_dashboard = metric_names(&dashboard);
    let missing: Vec<&String> = families.difference(&on_dashboard).collect();
    assert!(
        missing.is_empty(),
        "on /metrics but not on the dashboard: {missing:?}; add a panel or a query to \
         deploy/grafana/turnpike.json"
    );
}

#[test]
fn the_dashboard_is_laid_out_and_queries_its_data_source() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/turnpike.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut cells = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|key| grid[key].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than the dashboard");
        // No two panels cover the same cell of Grafana's 24-column grid.
        for column in x..x + w {
            for row in y..y + h {
                assert!(
                    cells.insert((column, row)),
                    "{title} overlaps another panel"
                );
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut references = BTreeSet::new();
        for target in targets {
            let expression = target["expr"].as_str().unwrap();
            assert!(
                expression.contains("turnpike_") || expression.contains("up{job=\"turnpike\""),
                "{title}: {expression}"
            );
            assert!(
                expression.contains("instance=~\"$instance\""),
                "{title}: {expression} ignores the relay selection"
            );
            assert!(
                references.insert(target["refId"].as_str().unwrap()),
                "{title}"
            );
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| variable["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "instance"]);
}

#[test]
fn promtool_accepts_the_rules_their_tests_and_the_live_exposition() {
    if !tool_present("promtool", "prometheus") {
        return;
    }
    let rules = root().join("deploy/prometheus");
    let output = run(
        Command::new("promtool")
            .args(["check", "rules", "turnpike-rules.yml"])
            .current_dir(&rules),
        b"",
    );
    assert!(
        output.status.success(),
        "check rules: {}",
        describe(&output)
    );
    let output = run(
        Command::new("promtool")
            .args(["test", "rules", "turnpike-rules.test.yml"])
            .current_dir(&rules),
        b"",
    );
    assert!(output.status.success(), "test rules: {}", describe(&output));

    let (_, exposition) = live_families();
    let output = run(
        Command::new("promtool").args(["check", "metrics"]),
        exposition.as_bytes(),
    );
    assert!(
        output.status.success(),
        "check metrics: {}",
        describe(&output)
    );
    // Lint findings (names, units, help) are printed even when the exit status is 0.
    assert!(
        output.stdout.is_empty() && output.stderr.is_empty(),
        "check metrics: {}",
        describe(&output)
    );
}

/// A directory with the unit (its ExecStart pointing at the binary under test) and the named
/// drop-ins (`xdp` for `deploy/systemd/turnpike-xdp.conf`, `tls` for `turnpike-tls.conf`)
/// beside it, as systemd would find them.
fn unit_directory(drop_ins: &[&str]) -> PathBuf {
    let directory = std::env::temp_dir().join(format!(
        "turnpike-unit-{}-{}",
        std::process::id(),
        drop_ins.join("-")
    ));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let unit = read("deploy/systemd/turnpike.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/turnpike "));
    std::fs::write(
        directory.join("turnpike.service"),
        unit.replace("/usr/local/bin/turnpike", env!("CARGO_BIN_EXE_turnpike")),
    )
    .unwrap();
    let drop_in_directory = directory.join("turnpike.service.d");
    std::fs::create_dir_all(&drop_in_directory).unwrap();
    for name in drop_ins {
        std::fs::write(
            drop_in_directory.join(format!("{name}.conf")),
            read(&format!("deploy/systemd/turnpike-{name}.conf")),
        )
        .unwrap();
    }
    directory
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_with_and_without_its_drop_ins() {
    if !tool_present("systemd-analyze", "systemd") {
        return;
    }
    let unit = read("deploy/systemd/turnpike.service");
    for setting in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting:?}");
    }
    // SIGHUP reads the TLS certificate and key again (and ends nothing): `systemctl reload`
    // sends it.
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    // LimitNOFILE covers the default range: two sockets per port, plus listeners and slack.
    let files: usize = unit
        .lines()
        .find_map(|line| line.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE")
        .parse()
        .unwrap();
    assert!(
        files >= 2 * (65535 - 49152 + 1) + 256,
        "LimitNOFILE={files}"
    );
    let drop_in = read("deploy/systemd/turnpike-xdp.conf");
    assert!(drop_in.contains("CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN\n"));
    // Port 443, and nothing more; the certificate files are read as plain files (credentials
    // would not be read again on reload).
    let tls = read("deploy/systemd/turnpike-tls.conf");
    assert!(tls.contains("\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"));
    assert!(!tls.contains("\nLoadCredential"));

    for drop_ins in [&[][..], &["xdp"], &["tls"], &["xdp", "tls"]] {
        let directory = unit_directory(drop_ins);
        let unit = directory.join("turnpike.service");
        // verify exits 0 on settings it ignores, so any message is a failure.
        let output = run(
            Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&unit)
                .env("SYSTEMD_LOG_COLOR", "0"),
            b"",
        );
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "verify (drop-ins: {drop_ins:?}): {}",
            describe(&output)
        );
        // The exposure score of `systemd-analyze security` (0 best, 10 worst): 2.0 at most.
        let output = run(
            Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
                .arg(&unit),
            b"",
        );
        assert!(
            output.status.success(),
            "security (drop-ins: {drop_ins:?}): {}",
            describe(&output)
        );
        std::fs::remove_dir_all(&directory).unwrap();
    }
}

/// The system calls in a group of systemd's `SystemCallFilter=`, nested groups expanded.
fn syscall_group(group: &str) -> BTreeSet<String> {
    let output = run(
        Command::new("systemd-analyze").args(["syscall-filter", "--no-pager", group]),
        b"",
    );
    assert!(output.status.success(), "{}", describe(&output));
    let mut calls = BTreeSet::new();
    // The group's own name comes first, unindented; its members follow, indented.
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        if !line.starts_with(char::is_whitespace) {
            continue;
        }
        let item = line.trim();
        if let Some(nested) = item.strip_prefix('@') {
            calls.extend(syscall_group(&format!("@{nested}")));
        } else if !item.is_empty()
            && !item.starts_with('#')
            && item.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            calls.insert(item.to_owned());
        }
    }
    calls
}

#[test]
fn the_units_system_call_filter_allows_every_call_the_relay_makes() {
    if !tool_present("systemd-analyze", "systemd") || !tool_present("strace", "strace") {
        return;
    }
    let unit = read("deploy/systemd/turnpike.service");
    assert!(unit.contains("\nSystemCallFilter=@system-service\n"));
    let allowed = syscall_group("@system-service");
    assert!(allowed.contains("sendmmsg") && allowed.contains("prlimit64"));

    // The relay under strace: start, an allocation relaying, the admin endpoint, a drain.
    let (listen, admin, _, relay_low) = common::ports();
    let trace = std::env::temp_dir().join(format!("turnpike-strace-{}", std::process::id()));
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_turnpike"))
        .args([
            format!("--listen=127.0.0.1:{listen}"),
            "--public-ipv4=127.0.0.1".to_owned(),
            format!("--relay-ports={relay_low}-{}", relay_low + 9),
            format!("--admin-listen=127.0.0.1:{admin}"),
            "--allow-peers=127.0.0.0/8".to_owned(),
            "--threads=2".to_owned(),
            "--drain-seconds=1".to_owned(),
            "--log-level=warn".to_owned(),
        ])
        .env("TURNPIKE_SECRETS", common::SECRET)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = std::panic::catch_unwind(|| {
        let get = |path: &str| {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            Some(response)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !get("/readyz").is_some_and(|response| response.starts_with("HTTP/1.1 200")) {
            assert!(
                Instant::now() < deadline,
                "the traced relay did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let peer = common::echo_peer(&stop);
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], listen));
        let allocation = common::allocate(server, peer, "strace").unwrap();
        let mut message = turnpike_load::run::CHANNEL.to_be_bytes().to_vec();
        message.extend_from_slice(&4_u16.to_be_bytes());
        message.extend_from_slice(b"ping");
        let mut buf = [0; 64];
        for _ in 0..20 {
            allocation.socket.send_to(&message, server).unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&allocation.socket);
            assert!(turnpike_io::wait_readable(fd, Duration::from_secs(2)).unwrap());
            allocation.socket.recv_from(&mut buf).unwrap();
        }
        for path in ["/metrics", "/status", "/"] {
            assert!(get(path).is_some_and(|response| response.starts_with("HTTP/1.1 200")));
        }
    });
    // SIGTERM to the relay (strace's child), then the drain and exit.
    let traced = std::fs::read_to_string(&trace).unwrap_or_default();
    let relay_pid: i32 = traced
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("strace wrote the relay's pid");
    // SAFETY: kill(2) on the relay this test started (strace's child).
    unsafe { libc::kill(relay_pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the traced relay did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let traced = std::fs::read_to_string(&trace).unwrap();
    std::fs::remove_file(&trace).unwrap();
    let called: BTreeSet<String> = traced
        .lines()
        .filter_map(|line| {
            let call = line.split_whitespace().nth(1)?;
            let name = &call[..call.find('(')?];
            Some(name.to_owned())
        })
        .collect();
    for expected in ["recvmmsg", "sendmmsg", "accept4", "prlimit64"] {
        assert!(
            called.contains(expected),
            "{expected} not traced: {called:?}"
        );
    }
    let refused: Vec<&String> = called.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter=@system-service would refuse {refused:?}"
    );
}

/// Every long flag `turnpike --help` lists, with its environment variable.
fn help_settings() -> Vec<(String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let mut settings = Vec::new();
    let mut flag: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flag = Some(name);
        } else if let Some(rest) = trimmed.strip_prefix("[env: ") {
            let env = rest.split('=').next().unwrap().to_owned();
            settings.push((flag.take().expect("an env line follows a flag"), env));
        }
    }
    assert!(settings.len() > 20, "{help}");
    settings
}

#[test]
fn the_operations_guide_documents_every_setting_of_help() {
    let guide = read("docs/operations.md");
    let settings = help_settings();
    for (flag, env) in &settings {
        assert!(
            guide.contains(&format!("`--{flag}`")),
            "docs/operations.md does not document --{flag}"
        );
        assert!(
            guide.contains(&format!("`{env}`")),
            "docs/operations.md does not name {env}"
        );
    }
    // And documents no flag the relay does not have.
    let known: BTreeSet<String> = settings
        .iter()
        .map(|(flag, _)| flag.clone())
        .chain(["help".to_owned(), "version".to_owned()])
        .collect();
    let mut rest = guide.as_str();
    while let Some(start) = rest.find("`--") {
        let name: String = rest[start + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        assert!(
            known.contains(&name),
            "docs/operations.md names --{name}, which --help lacks"
        );
        rest = &rest[start + 3..];
    }
}

/// The keys of a TOML example, set or shown commented out (`# key = value`).
fn example_keys(text: &str, commented: bool) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = if commented {
                line.strip_prefix("# ")?
            } else {
                line
            };
            let (key, _) = line.split_once(" = ")?;
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                .then(|| key.to_owned())
        })
        .collect()
}

fn temporary_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("turnpike-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn the_example_configuration_has_every_key_and_the_relay_accepts_it() {
    let example = read("deploy/turnpike.toml");
    let set = example_keys(&example, false);
    let shown = example_keys(&example, true);
    for (flag, _) in help_settings() {
        if flag != "config" {
            assert!(
                set.contains(&flag) || shown.contains(&flag),
                "deploy/turnpike.toml lacks {flag}"
            );
        }
    }

    // The relay starts with it; flags replace what belongs to the host (addresses, ports,
    // files) with what this test can use, a certificate and key made here among them.
    let certified =
        rcgen::generate_simple_self_signed(vec!["turn.example.com".to_owned()]).unwrap();
    let files: Vec<(&str, PathBuf)> = vec![
        (
            "secrets-file",
            temporary_file("secrets", "example-secret\n"),
        ),
        ("users-file", temporary_file("users", "alice:wonderland\n")),
        (
            "firezone-secret-file",
            temporary_file("firezone", "firezone-secret\n"),
        ),
        (
            "admin-token-file",
            temporary_file("token", "example-admin-token-0123\n"),
        ),
        (
            "nonce-key-file",
            temporary_file("nonce-keys", "example-nonce-key-0123456789\n"),
        ),
        (
            "tls-cert",
            temporary_file("cert.pem", &certified.cert.pem()),
        ),
        (
            "tls-key",
            temporary_file("key.pem", &certified.key_pair.serialize_pem()),
        ),
    ];
    let config = format!("--config={}", root().join("deploy/turnpike.toml").display());
    let mut arguments = vec![config.clone()];
    arguments.extend(
        files
            .iter()
            .map(|(setting, path)| format!("--{setting}={}", path.display())),
    );
    arguments.push("--threads=2".to_owned());
    // The example leaves TLS off; here it listens, with the certificate above, on this test's
    // spare port.
    let mut borrowed: Vec<&str> = arguments.iter().map(String::as_str).collect();
    borrowed.push("--listen-tls=127.0.0.1:{tls}");
    let relay = Relay::start(&borrowed);
    let metrics = relay.request(
        "GET",
        "/metrics",
        &["Authorization: Bearer example-admin-token-0123"],
        "",
    );
    let metrics = metrics.unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    // From the file: the quota.
    assert!(
        metrics
            .lines()
            .any(|line| line == "turnpike_allocations_limit 16000"),
        "{metrics}"
    );
    // And a TLS listener that answers a handshake with the certificate it was given.
    let tls_port = relay.listen_port + 3;
    let (_, cert_path) = files
        .iter()
        .find(|(setting, _)| *setting == "tls-cert")
        .unwrap();
    let client = turnpike_load::stream_client::tls_config(Some(cert_path)).unwrap();
    let mut connection =
        rustls::ClientConnection::new(client, "turn.example.com".try_into().unwrap()).unwrap();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).unwrap();
    }
    drop(socket);
    drop(relay);

    // The keys shown commented out parse too: with all of them set, the relay gets as far as
    // the kernel data plane (on an interface that does not exist) and stops there.
    let uncommented: String = example
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if example_keys(rest, false).len() == 1 => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let full = temporary_file("full.toml", &uncommented);
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnpike"));
    command
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .arg(format!("--config={}", full.display()))
        .args(arguments.iter().skip(1))
        .args([
            "--listen=127.0.0.1:0",
            "--public-ipv4=127.0.0.1",
            "--relay-ports=40000-40001",
            "--admin-listen=127.0.0.1:0",
            "--listen-tcp=127.0.0.1:0",
            "--listen-tls=[::1]:0",
            // Error reports off: the example's DSN names a host that is not there.
            "--sentry-dsn=",
            "--xdp-interface=turnpike-none0",
        ]);
    let output = run(&mut command, b"");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("xdp-interface:"), "{}", describe(&output));
    assert!(!stderr.contains("is not valid"), "{}", describe(&output));
    for (_, path) in files {
        std::fs::remove_file(path).unwrap();
    }
    std::fs::remove_file(full).unwrap();
}

#[test]
fn metric_names_are_found_in_text() {
    let names =
        metric_names("rate(turnpike_a_total[5m]) / xturnpike_b + turnpike_c{x=\"turnpike\"}");
    assert_eq!(
        names,
        BTreeSet::from(["turnpike_a_total".to_owned(), "turnpike_c".to_owned()])
    );
}
