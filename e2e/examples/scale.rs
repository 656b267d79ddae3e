//! The control-plane scale benchmark: `ROUTES` `StaticRoute`s (default
//! 10,000) through a real kube-apiserver to the release `pier-controller`
//! and `pier-dataplane` binaries, each its own process so its memory can be
//! read from `/proc`.
//!
//! Measures the time to create and to serve every route, the memory of the
//! controller and the dataplane, the snapshot build time (the controller's
//! histogram, and `pier_compile::compile` timed in this process), and the
//! apply-to-served latency of `LATENCY_SAMPLES` more routes created one at
//! a time with the others in place. Prints a Markdown report and writes it
//! to `bench/results/scale-<UTC time>.md`.
//!
//! Run it with `bench/scale.sh`, which builds the binaries first; the
//! method and the latest figures are in `bench/README.md`. It reports, it
//! never fails on a target. Everything it starts is killed when it ends,
//! panics or is interrupted.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use pier_compile::Resources;
use pier_crds::{ProxyRoute, StaticRoute};
use pier_e2e::ControlPlane;
use pier_snapshot::{RouteKey, RouteKind, Snapshot, wire};
use serde_json::json;

const TOKEN: &str = "scale-bench-token";
/// The dataplane's `--name`.
const DATAPLANE: &str = "scale-dataplane";
/// Interval between `GET /` attempts while a latency sample waits.
const SERVE_POLL: Duration = Duration::from_millis(2);
/// Interval of the timeline and of the waits on metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Quiet time after which the controller's status writes count as settled.
const QUIET: Duration = Duration::from_secs(5);
/// Longest wait for one latency sample to be served.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the settled system is watched for work done without changes.
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// In-process compile runs; the median is reported.
const COMPILE_RUNS: usize = 5;

/// The control-plane scale benchmark (see `bench/README.md`).
#[derive(Debug, Parser)]
#[command(name = "scale")]
struct Settings {
    /// Routes in place before latency is measured.
    #[arg(long, env = "ROUTES", default_value_t = 10_000)]
    routes: usize,
    /// Routes then created one at a time, each timed to its first 200.
    #[arg(long, env = "LATENCY_SAMPLES", default_value_t = 200)]
    latency_samples: usize,
    /// Namespaces the routes are spread over (route i in namespace i mod this).
    #[arg(long, env = "NAMESPACES", default_value_t = 100)]
    namespaces: usize,
    /// Services (each with an EndpointSlice of 3 ready endpoints), and as
    /// many ProxyRoutes, one per Service, beside the StaticRoutes.
    #[arg(long, env = "SERVICES", default_value_t = 1_000)]
    services: usize,
    /// Creates in flight at once while the routes are put in place.
    #[arg(long, env = "CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// Longest wait, in seconds, for every route to be served and again for
    /// every status to be written.
    #[arg(long, env = "SETTLE_TIMEOUT", default_value_t = 1200)]
    settle_timeout: u64,
    /// Directory of the release `pier-controller` and `pier-dataplane`
    /// (default: `release` under `CARGO_TARGET_DIR`, else the workspace's
    /// `target/release`).
    #[arg(long, env = "PIER_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Internal: measure the heap taken by the route objects in FILE (JSON)
    /// in a fresh process, and print it.
    #[arg(long, hide = true)]
    measure_heap: Option<PathBuf>,
    /// Only time `pier_compile::compile` on the synthetic routes (no API
    /// server), this many times, and print each time and the median: for
    /// profiling the build (`perf record … scale --compile-only 200`).
    #[arg(long, value_name = "RUNS")]
    compile_only: Option<usize>,
}

fn main() -> ExitCode {
    let settings = Settings::parse();
    if let Some(file) = &settings.measure_heap {
        println!("{}", measure_heap(file));
        return ExitCode::SUCCESS;
    }
    if let Some(runs) = settings.compile_only {
        let resources = synthetic_resources(&settings, "/srv");
        let mut times: Vec<Duration> = (0..runs.max(1))
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(pier_compile::compile(&resources));
                t.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "compile of {} static + {} proxy routes, {} runs: min {}, median {}, max {}",
            resources.static_routes.len(),
            resources.proxy_routes.len(),
            times.len(),
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let finished = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        // The losing branch is dropped here, and with it every process the
        // benchmark started (see `Daemon` and `ControlPlane`).
        tokio::select! {
            report = run(&settings) => Some(report),
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
        }
    });
    // Pollers on blocking threads give up by themselves; do not wait.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match finished {
        Some(path) => {
            eprintln!("written to {}", path.display());
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("interrupted: everything started was stopped");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the benchmark's results go under it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_owned()
}

fn say(what: &str, since: Instant) {
    eprintln!("[{:7.1} s] {what}", since.elapsed().as_secs_f64());
}

/// Everything the benchmark measured.
#[derive(Debug, Default)]
struct Figures {
    routes: usize,
    /// Services, each with one ProxyRoute.
    services: usize,
    namespaces: usize,
    concurrency: usize,
    create_all: Duration,
    create_retries: u32,
    served_all: Option<Duration>,
    settled: Option<Duration>,
    conditions: Conditions,
    idle: Memory,
    at_routes: Memory,
    after_latency: Memory,
    cpu_to_settle: (f64, f64, f64),
    idle_builds: f64,
    idle_writes: f64,
    idle_cpu: f64,
    controller_at_routes: Option<Scrape>,
    build_creating: Histogram,
    build_steady: Histogram,
    push_to_ack_steady: Histogram,
    status_writes_steady: f64,
    published_steady: f64,
    reconciles_steady: f64,
    latencies: Vec<Option<Duration>>,
    create_calls: Vec<Duration>,
    compile_synthetic: Duration,
    compile_listed: Duration,
    clone_listed: Duration,
    clone_compile_listed: Duration,
    objects: Objects,
    encode: Duration,
    decode: Duration,
    frame_bytes: usize,
    snapshot_routes: usize,
    timeline: Vec<Sample>,
    controller_warnings: usize,
    events: usize,
    controller_errors: usize,
    total: Duration,
}

/// The memory and CPU of the processes at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    controller: ProcStats,
    dataplane: ProcStats,
    apiserver: ProcStats,
    etcd: ProcStats,
    /// jemalloc `stats.allocated` and `stats.resident` of the dataplane.
    dp_allocated: f64,
    dp_resident: f64,
    /// `pier_dataplane_snapshot_routes`.
    dp_routes: f64,
    /// Size of the dataplane's `/metrics` page, and the time to fetch it.
    dp_metrics_bytes: usize,
    dp_metrics_time: Duration,
}

async fn run(settings: &Settings) -> PathBuf {
    let started = Instant::now();
    let bin_dir = settings.bin_dir.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from)
            .join("release")
    });
    let controller_bin = bin_dir.join("pier-controller");
    let dataplane_bin = bin_dir.join("pier-dataplane");
    for bin in [&controller_bin, &dataplane_bin] {
        assert!(
            bin.is_file(),
            "{} is missing: run bench/scale.sh, which builds it",
            bin.display()
        );
    }
    let mut figures = Figures {
        routes: settings.routes,
        services: settings.services,
        namespaces: settings.namespaces.max(1),
        concurrency: settings.concurrency.max(1),
        ..Figures::default()
    };
    let settle_timeout = Duration::from_secs(settings.settle_timeout);

    say("starting etcd and kube-apiserver", started);
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_pier_crds().await.expect("Pier's CRDs installed");
    let client = cp.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..figures.namespaces {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace(n)),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
    }

    let dir = tempfile::Builder::new()
        .prefix("pier-scale-")
        .tempdir()
        .expect("temporary directory");
    let file = |name: &str| dir.path().join(name);
    let (cert, key) = cp
        .issue_serving_cert("pier-controller")
        .expect("snapshot service certificate");
    std::fs::write(file("tls.crt"), cert).expect("write tls.crt");
    std::fs::write(file("tls.key"), key).expect("write tls.key");
    std::fs::write(file("ca.crt"), cp.ca_pem()).expect("write ca.crt");
    std::fs::write(file("token"), TOKEN).expect("write token");
    let docroot = file("docroot");
    std::fs::create_dir(&docroot).expect("docroot");
    std::fs::write(docroot.join("index.html"), "served\n").expect("write index.html");
    let docroot = docroot.to_string_lossy().into_owned();

    let [snapshot_addr, controller_admin, listen, dataplane_admin] = free_ports();
    let arg = |s: &str| s.to_owned();
    let path = |name: &str| file(name).to_string_lossy().into_owned();
    say("starting pier-controller", started);
    let mut controller = Daemon::spawn(
        "pier-controller",
        &controller_bin,
        &[
            arg("--snapshot-listen"),
            snapshot_addr.to_string(),
            arg("--snapshot-tls-cert"),
            path("tls.crt"),
            arg("--snapshot-tls-key"),
            path("tls.key"),
            arg("--snapshot-token-file"),
            path("token"),
            arg("--admin"),
            controller_admin.to_string(),
            // Read by `Served` and the log-level counts.
            arg("--log-format"),
            arg("json"),
        ],
        &[("KUBECONFIG", cp.kubeconfig_path())],
        file("controller.log"),
    );
    wait_until("the controller is ready", &mut [&mut controller], || {
        http_get(controller_admin, "localhost", "/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    say(
        "starting pier-dataplane (cluster mode, --workers 1)",
        started,
    );
    let mut dataplane = Daemon::spawn(
        "pier-dataplane",
        &dataplane_bin,
        &[
            arg("--controller"),
            format!("https://{snapshot_addr}"),
            arg("--controller-ca"),
            path("ca.crt"),
            arg("--controller-token-file"),
            path("token"),
            arg("--controller-server-name"),
            arg("localhost"),
            arg("--snapshot-store"),
            path("snapshot.json"),
            arg("--name"),
            arg(DATAPLANE),
            arg("--listen"),
            listen.to_string(),
            arg("--listen-tls"),
            arg("127.0.0.1:0"),
            arg("--admin"),
            dataplane_admin.to_string(),
            arg("--workers"),
            arg("1"),
        ],
        &[],
        file("dataplane.log"),
    );
    // Connected, not `/readyz`: a dataplane whose first snapshot is the
    // empty one stays unready (see bench/README.md).
    wait_until(
        "the dataplane is connected",
        &mut [&mut controller, &mut dataplane],
        || {
            scrape(dataplane_admin)
                .is_some_and(|m| m.value("pier_dataplane_controller_connected") == Some(1.0))
        },
    )
    .await;

    let targets = Targets {
        controller_admin,
        dataplane_admin,
        controller: controller.pid(),
        dataplane: dataplane.pid(),
        apiserver: find_pid(cp.dir(), "kube-apiserver"),
        etcd: find_pid(cp.dir(), "etcd"),
    };
    figures.idle = targets.memory();

    // Phase 1: every route in place, `concurrency` creates in flight.
    say(
        &format!(
            "creating {} routes over {} namespaces, {} in flight",
            figures.routes, figures.namespaces, figures.concurrency
        ),
        started,
    );
    let created = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let sampler = Sampler::start(
        targets,
        Served::new(file("controller.log")),
        Arc::clone(&created),
        t0,
    );
    let mut tasks = tokio::task::JoinSet::new();
    // Services with their slices, and one ProxyRoute each.
    for i in 0..figures.services {
        figures.create_retries += room(&mut tasks, figures.concurrency).await;
        let ns = namespace(i % figures.namespaces);
        let (service, slice, proxy) = backend(i, figures.namespaces);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let proxies: Api<ProxyRoute> = Api::namespaced(client.clone(), &ns);
        tasks.spawn(async move {
            create(&services, &service).await
                + create(&slices, &slice).await
                + create(&proxies, &proxy).await
        });
    }
    for i in 0..figures.routes {
        figures.create_retries += room(&mut tasks, figures.concurrency).await;
        let api: Api<StaticRoute> =
            Api::namespaced(client.clone(), &namespace(i % figures.namespaces));
        let route = route(i, figures.namespaces, &docroot);
        let created = Arc::clone(&created);
        tasks.spawn(async move {
            let retries = create(&api, &route).await;
            created.fetch_add(1, Ordering::Relaxed);
            retries
        });
    }
    while let Some(done) = tasks.join_next().await {
        figures.create_retries += done.expect("create task");
    }
    figures.create_all = t0.elapsed();
    say(
        &format!("created in {:.1} s", figures.create_all.as_secs_f64()),
        started,
    );

    // Served: the dataplane acknowledged a snapshot holding every route.
    let deadline = t0 + settle_timeout;
    let mut served = Served::new(file("controller.log"));
    while Instant::now() < deadline {
        check_alive(&mut [&mut controller, &mut dataplane]);
        let metrics = blocking(move || scrape(controller_admin))
            .await
            .unwrap_or_default();
        if served
            .routes(&metrics)
            .is_some_and(|n| n >= figures.routes + figures.services)
        {
            figures.served_all = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match figures.served_all {
        Some(t) => say(
            &format!("all served {:.1} s after the first create", t.as_secs_f64()),
            started,
        ),
        None => say("NOT all served before SETTLE_TIMEOUT", started),
    }

    // Phase 2: wait until the controller stops writing status, then check
    // that every route says Programmed=True. (Builds go on without writes:
    // lease renewals trigger them.)
    let deadline = Instant::now() + settle_timeout;
    let mut last = f64::NAN;
    let mut last_change = Instant::now();
    let mut checked_at = f64::NAN;
    while Instant::now() < deadline {
        check_alive(&mut [&mut controller, &mut dataplane]);
        let writes = blocking(move || scrape(controller_admin))
            .await
            .and_then(|m| m.value("pier_controller_status_writes_total"))
            .unwrap_or(f64::NAN);
        if writes != last {
            last = writes;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            figures.conditions = conditions(&client).await;
            let programmed = figures.conditions.programmed;
            if programmed >= figures.routes {
                figures.settled = Some(last_change - t0);
                break;
            }
            say(
                &format!(
                    "no status write for {} s, {programmed} routes Programmed ({})",
                    QUIET.as_secs(),
                    figures.conditions.reasons()
                ),
                started,
            );
            if checked_at == writes {
                say("no status write since the last check: giving up", started);
                break;
            }
            checked_at = writes;
            last_change = Instant::now();
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    match figures.settled {
        Some(t) => say(
            &format!(
                "statuses settled (all Programmed) {:.1} s after the first create",
                t.as_secs_f64()
            ),
            started,
        ),
        None => say(
            &format!("statuses NOT settled ({})", figures.conditions.reasons()),
            started,
        ),
    }

    let at_settle = targets.memory();

    // What the controller does with nothing changing.
    say(
        &format!("watching the idle system for {} s", IDLE_WINDOW.as_secs()),
        started,
    );
    let quiet_from = blocking(move || scrape(controller_admin))
        .await
        .expect("controller metrics");
    let cpu_from = proc_stats(Some(targets.controller)).cpu_secs;
    tokio::time::sleep(IDLE_WINDOW).await;
    let quiet_to = blocking(move || scrape(controller_admin))
        .await
        .expect("controller metrics");
    let change =
        |name: &str| quiet_to.value(name).unwrap_or(0.0) - quiet_from.value(name).unwrap_or(0.0);
    figures.idle_builds = change("pier_controller_reconciles_total");
    figures.idle_writes = change("pier_controller_status_writes_total");
    figures.idle_cpu = proc_stats(Some(targets.controller)).cpu_secs - cpu_from;
    figures.timeline = sampler.finish();
    figures.at_routes = targets.memory();
    let idle = figures.idle;
    figures.cpu_to_settle = (
        at_settle.controller.cpu_secs - idle.controller.cpu_secs,
        at_settle.dataplane.cpu_secs - idle.dataplane.cpu_secs,
        at_settle.apiserver.cpu_secs - idle.apiserver.cpu_secs,
    );
    let before = blocking(move || scrape(controller_admin))
        .await
        .expect("controller metrics");
    figures.build_creating = before.histogram("pier_controller_snapshot_build_seconds");

    // Phase 3: apply-to-served latency with the routes in place.
    say(
        &format!(
            "timing {} more routes, one at a time",
            settings.latency_samples
        ),
        started,
    );
    let mut jitter = Jitter::seeded();
    for j in 0..settings.latency_samples {
        check_alive(&mut [&mut controller, &mut dataplane]);
        let i = figures.routes + j;
        let api: Api<StaticRoute> =
            Api::namespaced(client.clone(), &namespace(i % figures.namespaces));
        let route = route(i, figures.namespaces, &docroot);
        let call = Instant::now();
        create(&api, &route).await;
        let since = Instant::now();
        figures.create_calls.push(since - call);
        let host = host(i);
        let latency = blocking(move || wait_served(listen, &host, since)).await;
        figures.latencies.push(latency);
        // Start the next sample at a random phase of the controller's
        // coalescing loop.
        tokio::time::sleep(jitter.below(Duration::from_millis(250))).await;
    }
    let after = blocking(move || scrape(controller_admin))
        .await
        .expect("controller metrics");
    figures.build_steady = after
        .histogram("pier_controller_snapshot_build_seconds")
        .since(&figures.build_creating);
    figures.push_to_ack_steady = after
        .histogram("pier_controller_push_to_ack_seconds")
        .since(&before.histogram("pier_controller_push_to_ack_seconds"));
    let delta = |name: &str| after.value(name).unwrap_or(0.0) - before.value(name).unwrap_or(0.0);
    figures.status_writes_steady = delta("pier_controller_status_writes_total");
    figures.reconciles_steady = delta("pier_controller_reconciles_total");
    figures.published_steady = delta("pier_controller_snapshots_published_total");
    figures.controller_at_routes = Some(before);
    figures.after_latency = targets.memory();

    // The controller's input, as the API server holds it (status and
    // managed fields included), for the in-process compile below.
    let listed: Vec<StaticRoute> = list_all(&client)
        .await
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect();
    let backends = Backends {
        services: list_all(&client).await,
        slices: list_all(&client).await,
        proxies: list_all(&client).await,
    };
    let log = std::fs::read_to_string(file("controller.log")).unwrap_or_default();
    let level = |level: &str| {
        let field = format!("\"level\":\"{level}\"");
        log.lines().filter(|l| l.contains(&field)).count()
    };
    figures.controller_warnings = level("WARN");
    figures.controller_errors = level("ERROR");
    figures.events = count_events(&client).await;
    let stamp = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let results = workspace().join("bench/results");
    std::fs::create_dir_all(&results).expect("bench/results");
    for name in ["controller", "dataplane"] {
        let _ = std::fs::copy(
            file(&format!("{name}.log")),
            results.join(format!("scale-{stamp}.{name}.log")),
        );
    }
    say("stopping the processes", started);
    drop(dataplane);
    drop(controller);
    drop(cp);

    // Phase 4: the pure build, on an otherwise idle machine.
    say("timing pier_compile::compile in this process", started);
    let resources = synthetic_resources(settings, &docroot);
    figures.compile_synthetic = median(|| {
        std::hint::black_box(pier_compile::compile(&resources));
    });
    // As the controller does it: share the stored objects (their `Arc`s
    // collected from the stores), then compile.
    let stored: Vec<Arc<StaticRoute>> = listed.iter().cloned().map(Arc::new).collect();
    figures.clone_compile_listed = median(|| {
        std::hint::black_box(pier_compile::compile(&backends.with(stored.clone())));
    });
    figures.clone_listed = median(|| {
        std::hint::black_box(backends.with(stored.clone()));
    });
    let listed_resources = backends.with(stored.clone());
    figures.compile_listed = median(|| {
        std::hint::black_box(pier_compile::compile(&listed_resources));
    });
    drop(listed_resources);
    figures.objects = objects(&listed, &file("objects.json"));
    let compiled = pier_compile::compile(&backends.with(stored));
    figures.snapshot_routes = compiled.snapshot.routes.len();
    let frame = wire::encode(&compiled.snapshot).expect("snapshot encodes");
    figures.frame_bytes = frame.len();
    figures.encode = median(|| {
        std::hint::black_box(wire::encode(&compiled.snapshot).expect("snapshot encodes"));
    });
    // What a dataplane does before applying a pushed snapshot.
    figures.decode = median(|| {
        let mut decoder = wire::Decoder::default();
        decoder.push(&frame);
        let snapshot: Snapshot = decoder
            .decode()
            .expect("frame decodes")
            .expect("a whole frame");
        assert!(snapshot.is_consistent(), "snapshot matches its version");
    });
    figures.total = started.elapsed();

    let report = render(&figures);
    println!("{report}");
    let path = results.join(format!("scale-{stamp}.md"));
    std::fs::write(&path, report).expect("write the report");
    path
}

fn namespace(n: usize) -> String {
    format!("bench-{n:03}")
}

fn host(i: usize) -> String {
    format!("r{i}.bench.example")
}

/// Route `i`: its own host, everything else the same.
fn route(i: usize, namespaces: usize, root: &str) -> StaticRoute {
    serde_json::from_value(json!({
        "apiVersion": "pier.dev/v1alpha1",
        "kind": "StaticRoute",
        "metadata": {"name": format!("r{i}"), "namespace": namespace(i % namespaces)},
        "spec": {"hosts": [host(i)], "root": root},
    }))
    .expect("a StaticRoute")
}

/// Service `i` (port 80) in namespace `i mod namespaces`, its EndpointSlice
/// of 3 ready endpoints (TEST-NET-1 addresses, never contacted: the API
/// server refuses loopback ones, and only the compile is measured), and a
/// ProxyRoute of its own host sending to it.
fn backend(i: usize, namespaces: usize) -> (Service, EndpointSlice, ProxyRoute) {
    let ns = namespace(i % namespaces);
    let name = format!("svc{i}");
    let service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        // Headless: 1,000 cluster IPs would fill the harness's service range.
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .expect("a Service");
    let endpoints: Vec<_> = (0..3)
        .map(|k| {
            json!({
                "addresses": [format!("192.0.2.{}", (3 * i + k) % 250 + 1)],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": format!("{name}-{k}"), "namespace": ns},
            })
        })
        .collect();
    let slice = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}-1"),
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice");
    let proxy = serde_json::from_value(json!({
        "apiVersion": "pier.dev/v1alpha1",
        "kind": "ProxyRoute",
        "metadata": {"name": format!("p{i}"), "namespace": ns},
        "spec": {"hosts": [format!("p{i}.bench.example")], "backends": [{"service": name, "port": 80}]},
    }))
    .expect("a ProxyRoute");
    (service, slice, proxy)
}

/// What the API server holds besides the StaticRoutes, shared as the
/// controller's stores share their objects.
struct Backends {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    proxies: Vec<Arc<ProxyRoute>>,
}

impl Backends {
    /// The compiler's input with `static_routes`, as the controller's
    /// build gathers it (reference counts, no object copied).
    fn with(&self, static_routes: Vec<Arc<StaticRoute>>) -> Resources {
        Resources {
            static_routes,
            proxy_routes: self.proxies.clone(),
            services: self.services.clone(),
            endpoint_slices: self.slices.clone(),
            ..Resources::default()
        }
    }
}

/// Waits until fewer than `limit` creates are in flight; their retries.
async fn room(tasks: &mut tokio::task::JoinSet<u32>, limit: usize) -> u32 {
    let mut retries = 0;
    while tasks.len() >= limit {
        retries += tasks
            .join_next()
            .await
            .expect("a create in flight")
            .expect("create task");
    }
    retries
}

/// Every object of a kind, in all namespaces, 500 at a time.
async fn list_all<K>(client: &kube::Client) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(500);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = api.list(&params).await.expect("objects listed");
        all.extend(page.items.into_iter().map(Arc::new));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return all;
        }
    }
}

// `Resources` grows a field per route kind; only static routes here.
#[allow(clippy::needless_update)]
/// The benchmark's routes, Services, slices and ProxyRoutes as the compiler
/// takes them, made in this process (generation 1, creation times 300 a
/// second).
fn synthetic_resources(settings: &Settings, docroot: &str) -> Resources {
    let synthetic: Vec<StaticRoute> = (0..settings.routes)
        .map(|i| {
            let mut r = route(i, settings.namespaces, docroot);
            r.metadata.generation = Some(1);
            r.metadata.creation_timestamp = Some(pier_crds::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_790_000_000 + (i / 300) as i64)
                    .expect("a timestamp"),
            ));
            r
        })
        .collect();
    let mut resources = static_resources(synthetic);
    for i in 0..settings.services {
        let (service, slice, proxy) = backend(i, settings.namespaces);
        resources.services.push(Arc::new(service));
        resources.endpoint_slices.push(Arc::new(slice));
        resources.proxy_routes.push(Arc::new(proxy));
    }
    resources
}

fn static_resources(static_routes: Vec<StaticRoute>) -> Resources {
    Resources {
        static_routes: static_routes.into_iter().map(Arc::new).collect(),
        ..Resources::default()
    }
}

/// What the controller's route objects weigh.
#[derive(Debug, Default, Clone)]
struct Objects {
    count: usize,
    json_bytes: usize,
    managed_fields_json_bytes: usize,
    /// From a fresh process (see [`measure_heap`]), KiB.
    heap: Option<Heap>,
}

/// Heap growth, in KiB, of a fresh process as it parses the objects, clones
/// them, and builds a route key → generation map of them (what the
/// controller's fleet keeps for each of the last 32 published snapshots).
#[derive(Debug, Default, Clone, Copy)]
struct Heap {
    objects_kib: u64,
    clone_kib: u64,
    contents_kib: u64,
}

/// Sizes of `listed` as JSON, and on the heap of a fresh process (this
/// program run with `--measure-heap`), which reuses no freed memory.
fn objects(listed: &[StaticRoute], scratch: &Path) -> Objects {
    let json = serde_json::to_vec(listed).expect("objects serialise");
    std::fs::write(scratch, &json).expect("write the objects");
    let managed_fields_json_bytes = listed
        .iter()
        .map(|o| serde_json::to_vec(&o.metadata.managed_fields).map_or(0, |j| j.len()))
        .sum();
    let heap = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            Command::new(exe)
                .arg("--measure-heap")
                .arg(scratch)
                .env_remove("ROUTES")
                .output()
                .ok()
        })
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut n = text.split_whitespace().map(|v| v.parse::<u64>().ok());
            Some(Heap {
                objects_kib: n.next()??,
                clone_kib: n.next()??,
                contents_kib: n.next()??,
            })
        });
    Objects {
        count: listed.len(),
        json_bytes: json.len(),
        managed_fields_json_bytes,
        heap,
    }
}

/// `--measure-heap FILE`: the RSS growth (KiB) of parsing the objects,
/// cloning them, and mapping their keys to generations, as three numbers.
fn measure_heap(file: &Path) -> String {
    let json = std::fs::read(file).expect("read the objects");
    let rss = || proc_stats(Some(std::process::id())).rss_kib;
    let start = rss();
    let objects: Vec<StaticRoute> = serde_json::from_slice(&json).expect("objects parse");
    let parsed = rss();
    let copy = objects.clone();
    let cloned = rss();
    let contents: HashMap<RouteKey, i64> = objects
        .iter()
        .map(|o| {
            let key = RouteKey::new(
                RouteKind::StaticRoute,
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default(),
            );
            (key, o.metadata.generation.unwrap_or(0))
        })
        .collect();
    let mapped = rss();
    std::hint::black_box((&copy, &contents));
    format!(
        "{} {} {}",
        parsed.saturating_sub(start),
        cloned.saturating_sub(parsed),
        mapped.saturating_sub(cloned)
    )
}

/// Creates `route`, retrying transient failures; returns the retries.
async fn create<K>(api: &Api<K>, route: &K) -> u32
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = route.meta().name.as_deref().unwrap_or_default();
    let mut retries = 0;
    loop {
        match api.create(&PostParams::default(), route).await {
            Ok(_) => return retries,
            // An earlier attempt went through after all.
            Err(kube::Error::Api(e)) if retries > 0 && e.code == 409 => return retries,
            Err(e) if retries < 5 => {
                eprintln!("creating {name} failed ({e}); retrying");
                retries += 1;
                tokio::time::sleep(Duration::from_millis(200) * retries).await;
            }
            Err(e) => panic!("creating {name}: {e}"),
        }
    }
}

/// Events in every namespace (the controller records condition
/// transitions as `events.k8s.io/v1` Events).
async fn count_events(client: &kube::Client) -> usize {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let mut count = 0;
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(500);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let Ok(page) = api.list(&params).await else {
            return count;
        };
        count += page.items.len();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return count;
        }
    }
}

/// What the routes' status says.
#[derive(Debug, Default, Clone)]
struct Conditions {
    /// `Programmed=True` for the current generation.
    programmed: usize,
    /// Without `Accepted=True` for the current generation.
    not_accepted: usize,
    /// Routes by their `Programmed` condition (`status/reason`, or `none`,
    /// or `stale` when it is for an older generation).
    by_programmed: BTreeMap<String, usize>,
}

impl Conditions {
    fn reasons(&self) -> String {
        let all: Vec<String> = self
            .by_programmed
            .iter()
            .map(|(reason, n)| format!("Programmed {reason}: {n}"))
            .collect();
        all.join(", ")
    }
}

async fn conditions(client: &kube::Client) -> Conditions {
    let mut counts = Conditions::default();
    for route in list_all::<StaticRoute>(client).await {
        let find = |kind: &str| {
            route
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        };
        let current =
            |c: &&pier_crds::Condition| c.observed_generation == route.metadata.generation;
        let programmed = find("Programmed");
        counts.programmed += usize::from(
            programmed
                .filter(current)
                .is_some_and(|c| c.status == "True"),
        );
        counts.not_accepted += usize::from(
            find("Accepted")
                .filter(current)
                .is_none_or(|c| c.status != "True"),
        );
        let key = match programmed {
            None => "none".to_owned(),
            Some(c) if !current(&c) => "stale".to_owned(),
            Some(c) => format!("{}/{}", c.status, c.reason),
        };
        *counts.by_programmed.entry(key).or_default() += 1;
    }
    counts
}

/// Polls `GET /` with `Host: host` until it answers 200; the time since
/// `since`, or `None` after [`SAMPLE_TIMEOUT`].
fn wait_served(addr: SocketAddr, host: &str, since: Instant) -> Option<Duration> {
    loop {
        if http_get(addr, host, "/").is_some_and(|(status, _)| status == 200) {
            return Some(since.elapsed());
        }
        if since.elapsed() > SAMPLE_TIMEOUT {
            return None;
        }
        std::thread::sleep(SERVE_POLL);
    }
}

/// Runs blocking I/O off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task finished")
}

/// Polls `ready` until it holds; panics after a minute or when one of
/// `daemons` exits.
async fn wait_until(what: &str, daemons: &mut [&mut Daemon], ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        check_alive(daemons);
        if Instant::now() > deadline {
            let logs: Vec<String> = daemons.iter().map(|d| d.log_tail()).collect();
            panic!("timed out waiting until {what}:\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_alive(daemons: &mut [&mut Daemon]) {
    for daemon in daemons {
        daemon.check_alive();
    }
}

/// Four distinct free loopback ports.
fn free_ports() -> [SocketAddr; 4] {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let addr = |i: usize| listeners[i].local_addr().expect("bound address");
    [addr(0), addr(1), addr(2), addr(3)]
}

/// A process started by the benchmark, killed when dropped.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
        log: PathBuf,
    ) -> Self {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Self { name, child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics, quoting the log, when the process has ended.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    /// The last lines of the log, under a heading.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        format!(
            "--- {} ({}):\n{}",
            self.name,
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` with `Host: host`: status and body, or `None` when the
/// exchange fails.
fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let _ = stream.set_nodelay(true);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = response[end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Some((status, if chunked { dechunk(&body)? } else { body }))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// One scrape of a Prometheus text endpoint: series (name and labels) to
/// value.
#[derive(Debug, Default, Clone)]
struct Scrape(HashMap<String, f64>);

fn scrape(admin: SocketAddr) -> Option<Scrape> {
    let (status, body) = http_get(admin, "localhost", "/metrics")?;
    if status != 200 {
        return None;
    }
    Some(Scrape::parse(&String::from_utf8(body).ok()?))
}

impl Scrape {
    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    fn value(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    fn histogram(&self, name: &str) -> Histogram {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(series, count)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            sum: self.value(&format!("{name}_sum")).unwrap_or(0.0),
            count: self.value(&format!("{name}_count")).unwrap_or(0.0),
        }
    }
}

/// A Prometheus histogram: cumulative buckets `(le, count)`, sum, count.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// What was observed after `earlier`.
    fn since(&self, earlier: &Self) -> Self {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, c - before(le)))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The fraction of observations in the bucket bounded by `le`.
    fn share_within(&self, le: f64) -> Option<f64> {
        let within = self.buckets.iter().find(|(l, _)| *l == le)?.1;
        (self.count > 0.0).then(|| within / self.count)
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The smallest bucket bound holding the fraction `q` of observations.
    fn bound(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        self.buckets
            .iter()
            .find(|(_, c)| *c >= q * self.count)
            .map(|(le, _)| *le)
    }
}

/// `VmRSS`, `VmHWM` and CPU time of a process; zeros when it is gone.
#[derive(Debug, Default, Clone, Copy)]
struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_secs: f64,
}

fn proc_stats(pid: Option<u32>) -> ProcStats {
    let Some(pid) = pid else {
        return ProcStats::default();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    // Fields after the command name: state is the first, utime the 12th
    // and stime the 13th, in clock ticks (USER_HZ, 100 on Linux).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcStats {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_secs: (ticks(11) + ticks(12)) as f64 / 100.0,
    }
}

/// The process named `comm` whose command line mentions `dir` (the
/// control plane's temporary directory).
fn find_pid(dir: &Path, comm: &str) -> Option<u32> {
    let dir = dir.to_string_lossy();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (name.trim() == comm && String::from_utf8_lossy(&cmdline).contains(dir.as_ref()))
                .then_some(pid)
        })
}

/// What the timeline and the memory figures read.
#[derive(Debug, Clone, Copy)]
struct Targets {
    controller_admin: SocketAddr,
    dataplane_admin: SocketAddr,
    controller: u32,
    dataplane: u32,
    apiserver: Option<u32>,
    etcd: Option<u32>,
}

impl Targets {
    /// The processes' figures from `/proc` only.
    fn processes(&self) -> Memory {
        Memory {
            controller: proc_stats(Some(self.controller)),
            dataplane: proc_stats(Some(self.dataplane)),
            apiserver: proc_stats(self.apiserver),
            etcd: proc_stats(self.etcd),
            ..Memory::default()
        }
    }

    /// [`Targets::processes`], then one scrape of the dataplane's
    /// `/metrics` for jemalloc's figures (read while that page, large with
    /// many routes, is rendered) and the page's size and time.
    fn memory(&self) -> Memory {
        let mut memory = self.processes();
        let started = Instant::now();
        if let Some((200, body)) = http_get(self.dataplane_admin, "localhost", "/metrics") {
            memory.dp_metrics_time = started.elapsed();
            memory.dp_metrics_bytes = body.len();
            let dp = Scrape::parse(&String::from_utf8_lossy(&body));
            memory.dp_allocated = dp
                .value("pier_dataplane_allocator_allocated_bytes")
                .unwrap_or(0.0);
            memory.dp_resident = dp
                .value("pier_dataplane_allocator_resident_bytes")
                .unwrap_or(0.0);
            memory.dp_routes = dp.value("pier_dataplane_snapshot_routes").unwrap_or(0.0);
        }
        memory
    }
}

/// The routes the dataplane serves, as the controller sees them: the
/// version the dataplane acknowledged (it acknowledges after applying),
/// looked up in the controller's JSON log of published snapshots. The
/// dataplane's own `/metrics` is not polled: with a histogram per route it
/// is megabytes long at this scale.
#[derive(Debug)]
struct Served {
    log: PathBuf,
    read: u64,
    routes: HashMap<String, usize>,
}

impl Served {
    fn new(log: PathBuf) -> Self {
        // Before any publication the dataplane acknowledges the empty one.
        let routes = HashMap::from([(Snapshot::empty().version, 0)]);
        Self {
            log,
            read: 0,
            routes,
        }
    }

    /// Routes in the snapshot the dataplane acknowledged, per `controller`.
    fn routes(&mut self, controller: &Scrape) -> Option<usize> {
        self.update();
        let acked = controller.0.keys().find_map(|series| {
            let labels = series.strip_prefix("pier_controller_dataplane_applied_info{")?;
            labels
                .contains(&format!("dataplane=\"{DATAPLANE}\""))
                .then(|| label(labels, "version"))?
        })?;
        self.routes.get(acked).copied()
    }

    /// Reads the log lines written since the last call.
    fn update(&mut self) {
        use std::io::{Seek, SeekFrom};
        let Ok(mut file) = File::open(&self.log) else {
            return;
        };
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.read)).is_err() || file.read_to_end(&mut new).is_err() {
            return;
        }
        let Some(end) = new.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        self.read += end as u64 + 1;
        for line in new[..end].split(|&b| b == b'\n') {
            let Ok(entry) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let fields = &entry["fields"];
            if fields["message"] == "snapshot published"
                && let (Some(version), Some(routes)) =
                    (fields["version"].as_str(), fields["routes"].as_u64())
            {
                self.routes.insert(version.to_owned(), routes as usize);
            }
        }
    }
}

/// The value of label `name` in `a="x",b="y"}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// One row of the timeline.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    created: usize,
    served: Option<usize>,
    reconciles: f64,
    published: f64,
    status_writes: f64,
    memory: Memory,
    /// The machine's one-minute load average.
    load: f64,
}

/// Samples the metrics every second on its own thread until finished or
/// dropped.
#[derive(Debug)]
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    fn start(targets: Targets, mut served: Served, created: Arc<AtomicUsize>, t0: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = t0;
            while !stopped.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                next += SAMPLE_EVERY;
                let c = scrape(targets.controller_admin).unwrap_or_default();
                let metric = |name: &str| c.value(name).unwrap_or(f64::NAN);
                samples.push(Sample {
                    at: t0.elapsed(),
                    created: created.load(Ordering::Relaxed),
                    served: served.routes(&c),
                    reconciles: metric("pier_controller_reconciles_total"),
                    published: metric("pier_controller_snapshots_published_total"),
                    status_writes: metric("pier_controller_status_writes_total"),
                    memory: targets.processes(),
                    load: load_average(),
                });
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("sampler thread"))
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// xorshift64, seeded from the clock: random pauses need no crate.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self(u64::from(nanos) | 1)
    }

    fn below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

/// Median wall time of [`COMPILE_RUNS`] runs of `f`.
fn median(mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..COMPILE_RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Nearest-rank percentile; a sample never served counts as infinite.
fn percentile(sorted: &[Option<Duration>], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not reached".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mib_bytes(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

fn bound(b: Option<f64>) -> String {
    match b {
        None => "n/a".to_owned(),
        Some(b) if b.is_infinite() => "> 10 s".to_owned(),
        Some(b) => format!("≤ {} ms", b * 1e3),
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `git describe`, and the sources that differ from it outside `bench/`
/// and `e2e/` (the binaries are built from the working tree).
fn git_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let described =
        git(&["describe", "--always", "--dirty"]).unwrap_or_else(|| "unknown".to_owned());
    let changed: Vec<String> = git(&[
        "status",
        "--porcelain",
        "--",
        "controller",
        "dataplane",
        "snapshot",
        "crds",
    ])
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.get(3..).map(str::to_owned))
    .collect();
    if changed.is_empty() {
        format!("`{described}`")
    } else {
        format!("`{described}` (uncommitted: {})", changed.join(", "))
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs ({model})")
}

fn render(f: &Figures) -> String {
    let mut out = String::new();
    let n = f.routes;
    let s = f.services;
    let _ = writeln!(
        out,
        "# Control plane at scale: {n} StaticRoutes and {s} ProxyRoutes to {s} Services (3 endpoints each) over {} namespaces ({})\n",
        f.namespaces,
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        out,
        "Machine: {}; revision {}; release binaries; controller flags at their defaults (`--coalesce 100ms`, leader election on), dataplane `--workers 1`; one kube-apiserver v1.34.4 + etcd v3.6.16 on the same machine. Run took {:.0} s.\n",
        machine(),
        git_revision(),
        f.total.as_secs_f64()
    );

    let mut sorted = f.latencies.clone();
    sorted.sort_by_key(|l| l.unwrap_or(Duration::MAX));
    let pct = |q: f64| percentile(&sorted, q).map_or_else(|| "not served".to_owned(), ms);
    let p99 = percentile(&sorted, 0.99);
    let timeouts = f.latencies.iter().filter(|l| l.is_none()).count();
    let mut calls = f.create_calls.clone();
    calls.sort();
    let call_p50 = calls.get(calls.len() / 2).copied().unwrap_or_default();
    let build = &f.build_steady;
    let build_mean = build
        .mean()
        .map_or_else(|| "n/a".to_owned(), |m| ms(Duration::from_secs_f64(m)));
    let controller = f.controller_at_routes.clone().unwrap_or_default();
    let c = |name: &str| controller.value(name).unwrap_or(f64::NAN);
    let per_route =
        |now: u64, idle: u64| (now.saturating_sub(idle) * 1024) as f64 / n.max(1) as f64;

    let _ = writeln!(out, "| measure | value | target |\n|---|---|---|");
    let mut row = |measure: String, value: String, target: &str| {
        let _ = writeln!(out, "| {measure} | {value} | {target} |");
    };
    row(
        format!("create {n} routes, {} in flight", f.concurrency),
        format!(
            "{} ({:.0}/s, {} retries)",
            secs(Some(f.create_all)),
            n as f64 / f.create_all.as_secs_f64().max(1e-9),
            f.create_retries
        ),
        "",
    );
    row(
        "first create → dataplane serves all".to_owned(),
        secs(f.served_all),
        "",
    );
    row(
        "first create → every status `Programmed=True` (status writes stop)".to_owned(),
        format!(
            "{} ({}; {} not Accepted)",
            secs(f.settled),
            f.conditions.reasons(),
            f.conditions.not_accepted
        ),
        "",
    );
    row(
        format!("`compile`, in process, {n} synthetic routes (median of {COMPILE_RUNS})"),
        ms(f.compile_synthetic),
        &format!(
            "< 100 ms: {}",
            met(f.compile_synthetic < Duration::from_millis(100))
        ),
    );
    row(
        format!(
            "`compile` of the {} objects listed from the API server (status and managedFields included)",
            f.snapshot_routes
        ),
        ms(f.compile_listed),
        &format!(
            "< 100 ms: {}",
            met(f.compile_listed < Duration::from_millis(100))
        ),
    );
    row(
        "gathering those objects (`Arc` clones) / that + `compile`, as the controller's build does"
            .to_owned(),
        format!("{} / {}", ms(f.clone_listed), ms(f.clone_compile_listed)),
        &format!(
            "< 100 ms: {}",
            met(f.clone_compile_listed < Duration::from_millis(100))
        ),
    );
    row(
        format!(
            "controller build histogram at {n}+ routes ({} builds during the latency phase): mean; share ≤ 100 ms; 99% and max by bucket",
            build.count
        ),
        format!(
            "{build_mean}; {}; {}; {}",
            build
                .share_within(0.1)
                .map_or_else(|| "n/a".to_owned(), |s| format!("{:.0}%", s * 100.0)),
            bound(build.bound(0.99)),
            bound(build.bound(1.0))
        ),
        &format!(
            "< 100 ms: mean {}, p99 {}",
            met(build.mean().is_some_and(|m| m < 0.1)),
            met(build.bound(0.99).is_some_and(|b| b <= 0.1))
        ),
    );
    row(
        "same histogram while the routes were created (0 → N routes)".to_owned(),
        format!(
            "{} builds; mean {}; max {}",
            f.build_creating.count,
            f.build_creating
                .mean()
                .map_or_else(|| "n/a".to_owned(), |m| ms(Duration::from_secs_f64(m))),
            bound(f.build_creating.bound(1.0))
        ),
        "",
    );
    row(
        "snapshot frame: `wire::encode` / decode + version check (median)".to_owned(),
        format!("{} / {}", ms(f.encode), ms(f.decode)),
        "",
    );
    row(
        "snapshot size (controller `snapshot_bytes`, `snapshot_routes`)".to_owned(),
        format!(
            "{} ({:.0} B/route), {} routes",
            mib_bytes(c("pier_controller_snapshot_bytes")),
            c("pier_controller_snapshot_bytes") / n.max(1) as f64,
            c("pier_controller_snapshot_routes")
        ),
        "",
    );
    row(
        format!(
            "apply → served, {} routes created one at a time (create call p50 {})",
            f.latencies.len(),
            ms(call_p50)
        ),
        format!(
            "p50 {}, p90 {}, p99 {}, max {}{}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0),
            if timeouts > 0 {
                format!(", {timeouts} never served")
            } else {
                String::new()
            }
        ),
        &format!(
            "p99 < 1 s: {}",
            met(p99.is_some_and(|p| p < Duration::from_secs(1)))
        ),
    );
    let ack = &f.push_to_ack_steady;
    row(
        "publish → dataplane ack (controller histogram, latency phase)".to_owned(),
        format!(
            "{} acks; mean {}; 99% {}",
            ack.count,
            ack.mean()
                .map_or_else(|| "n/a".to_owned(), |m| ms(Duration::from_secs_f64(m))),
            bound(ack.bound(0.99))
        ),
        "",
    );
    row(
        "controller during the latency phase".to_owned(),
        format!(
            "{} builds ({} published), {} status writes for {} new routes",
            f.reconciles_steady,
            f.published_steady,
            f.status_writes_steady,
            f.latencies.len()
        ),
        "",
    );
    let (idle, at, after) = (&f.idle, &f.at_routes, &f.after_latency);
    row(
        "controller RSS: idle → with the routes → after latency phase (peak)".to_owned(),
        format!(
            "{} → {} → {} ({}); {:.0} B/route",
            mib(idle.controller.rss_kib),
            mib(at.controller.rss_kib),
            mib(after.controller.rss_kib),
            mib(after.controller.hwm_kib),
            per_route(at.controller.rss_kib, idle.controller.rss_kib)
        ),
        "",
    );
    let o = &f.objects;
    let per_object = |kib: u64| (kib * 1024) as f64 / o.count.max(1) as f64;
    row(
        format!(
            "the {} route objects: JSON (of which managedFields); heap of a fresh process holding them / a clone / a key → generation map",
            o.count
        ),
        format!(
            "{:.0} B/route ({:.0} B); {}",
            o.json_bytes as f64 / o.count.max(1) as f64,
            o.managed_fields_json_bytes as f64 / o.count.max(1) as f64,
            o.heap.map_or_else(
                || "heap not measured".to_owned(),
                |h| format!(
                    "{} ({:.0} B/route) / {} / {}",
                    mib(h.objects_kib),
                    per_object(h.objects_kib),
                    mib(h.clone_kib),
                    mib(h.contents_kib)
                )
            )
        ),
        "",
    );
    row(
        "dataplane RSS: idle → with the routes → after latency phase (peak)".to_owned(),
        format!(
            "{} → {} → {} ({}); {:.0} B/route",
            mib(idle.dataplane.rss_kib),
            mib(at.dataplane.rss_kib),
            mib(after.dataplane.rss_kib),
            mib(after.dataplane.hwm_kib),
            per_route(at.dataplane.rss_kib, idle.dataplane.rss_kib)
        ),
        "",
    );
    row(
        "dataplane jemalloc allocated (resident): idle → with the routes (read while it renders `/metrics`, so that page is included)".to_owned(),
        format!(
            "{} ({}) → {} ({}); {:.0} B/route allocated",
            mib_bytes(idle.dp_allocated),
            mib_bytes(idle.dp_resident),
            mib_bytes(at.dp_allocated),
            mib_bytes(at.dp_resident),
            (at.dp_allocated - idle.dp_allocated) / n.max(1) as f64
        ),
        "",
    );
    row(
        "kube-apiserver / etcd RSS with the routes".to_owned(),
        format!("{} / {}", mib(at.apiserver.rss_kib), mib(at.etcd.rss_kib)),
        "",
    );
    row(
        "CPU time from the first create until settled: controller / dataplane / kube-apiserver"
            .to_owned(),
        format!(
            "{:.1} s / {:.1} s / {:.1} s",
            f.cpu_to_settle.0, f.cpu_to_settle.1, f.cpu_to_settle.2
        ),
        "",
    );
    row(
        format!(
            "controller with nothing changing ({} s after settling)",
            IDLE_WINDOW.as_secs()
        ),
        format!(
            "{} builds, {} status writes, {:.2} s CPU ({:.1}% of a core)",
            f.idle_builds,
            f.idle_writes,
            f.idle_cpu,
            f.idle_cpu * 100.0 / IDLE_WINDOW.as_secs_f64()
        ),
        "",
    );
    row(
        "Events in the cluster at the end (the controller's, one per condition transition)"
            .to_owned(),
        f.events.to_string(),
        "",
    );
    row(
        format!(
            "dataplane `/metrics` at {} routes: size, fetch time",
            at.dp_routes
        ),
        format!(
            "{} ({:.0} B per route), {}",
            mib_bytes(at.dp_metrics_bytes as f64),
            at.dp_metrics_bytes as f64 / n.max(1) as f64,
            ms(at.dp_metrics_time)
        ),
        "",
    );
    row(
        "controller log lines: WARN / ERROR".to_owned(),
        format!("{} / {}", f.controller_warnings, f.controller_errors),
        "",
    );

    let _ = writeln!(
        out,
        "\nTimeline from the first create (sampled every second; shown every {} s):\n",
        timeline_stride(f.timeline.len())
    );
    let _ = writeln!(
        out,
        "| t (s) | created | served (acknowledged) | builds | published | status writes | controller RSS | dataplane RSS | controller CPU (s) | load avg |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let stride = timeline_stride(f.timeline.len());
    let last = f.timeline.len().saturating_sub(1);
    for (i, s) in f.timeline.iter().enumerate() {
        if i % stride != 0 && i != last {
            continue;
        }
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} |",
            s.at.as_secs_f64(),
            s.created,
            s.served.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            s.reconciles,
            s.published,
            s.status_writes,
            mib(s.memory.controller.rss_kib),
            mib(s.memory.dataplane.rss_kib),
            s.memory.controller.cpu_secs,
            s.load
        );
    }
    out
}

/// Every how many samples a timeline row is shown (at most about 40 rows).
fn timeline_stride(samples: usize) -> usize {
    [1, 2, 5, 10, 15, 30, 60]
        .into_iter()
        .find(|s| samples / s <= 40)
        .unwrap_or(120)
}
