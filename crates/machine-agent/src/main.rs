//! `ccr-agent`: parse arguments, set up logging, call into the library.

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use machine_agent::config::{self, Cli, Command, CommonArgs, Config, HookEvent, TelegramCommand};
use machine_agent::{doctor, hooks, service, settings, status, telegram_setup};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => daemon(&cli.common),
        Command::Hook { event } => hook(&cli.common, event),
        Command::InstallHooks { settings } => install_hooks(&cli.common, settings),
        Command::Status => status_cmd(&cli.common),
        Command::MachineKey => machine_key(&cli.common),
        Command::Telegram {
            command: TelegramCommand::Setup(args),
        } => telegram_setup_cmd(&cli.common, &args),
        Command::InstallService(args) => install_service(&cli.common, &args),
        Command::Doctor(args) => doctor_cmd(&cli.common, &args),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ccr-agent: {e}");
    ExitCode::from(2)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn daemon(args: &CommonArgs) -> ExitCode {
    let config = match Config::from_args_or_saved(args) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    init_tracing();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccr-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = shutdown_signal()?;
        machine_agent::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// A hook never fails Claude: every error is logged and the exit code is 0, even on a panic.
fn hook(args: &CommonArgs, event: HookEvent) -> ExitCode {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_hook(args, event)));
    ExitCode::SUCCESS
}

fn run_hook(args: &CommonArgs, event: HookEvent) {
    let data_dir = match config::data_dir(args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ccr-agent hook: {e}");
            return;
        }
    };
    let _ = std::fs::create_dir_all(&data_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("hooks.log"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match log {
        Ok(file) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init(),
        Err(_) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    // Claude closes stdin after writing the JSON; a caller that never does must not hang
    // the hook, so the read runs on its own thread with a deadline.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut input = Vec::new();
        let read = std::io::stdin()
            .take(hooks::MAX_INPUT_BYTES as u64)
            .read_to_end(&mut input)
            .map(|_| input);
        let _ = tx.send(read);
    });
    let input = match rx.recv_timeout(hooks::STDIN_DEADLINE) {
        Ok(Ok(input)) => input,
        Ok(Err(e)) => {
            tracing::warn!(hook = event.arg(), "reading the hook input: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(
                hook = event.arg(),
                "no hook input on stdin within {:?}",
                hooks::STDIN_DEADLINE
            );
            return;
        }
    };
    let input = String::from_utf8_lossy(&input);
    let env = hooks::HookEnv::from_process();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("cannot start the async runtime: {e}");
            return;
        }
    };
    let outcome = rt.block_on(async {
        tokio::time::timeout(
            hooks::HOOK_DEADLINE,
            hooks::run_hook(event, args, &data_dir, &input, &env),
        )
        .await
    });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(hook = event.arg(), "hook failed: {e:#}");
            eprintln!("ccr-agent hook {}: {e:#}", event.arg());
        }
        Err(_) => {
            tracing::warn!(
                hook = event.arg(),
                "hook gave up after {:?}",
                hooks::HOOK_DEADLINE
            );
        }
    }
    // Do not wait for anything still running (a hung request): Claude must not wait.
    rt.shutdown_background();
}

fn install_hooks(args: &CommonArgs, path: Option<std::path::PathBuf>) -> ExitCode {
    let Some(path) = path.or_else(settings::default_settings_path) else {
        return config_error("HOME is not set: pass --settings <path to settings.json>");
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("ccr-agent: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    match settings::install(&path, &exe, args.data_dir.as_deref()) {
        Ok(r) if !r.changed => {
            println!("{}: the hooks are already installed", r.path.display());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            if let Some(b) = &r.backup {
                println!("backed up the previous settings to {}", b.display());
            }
            println!(
                "installed the SessionStart, Stop, Notification and SessionEnd hooks in {}",
                r.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ccr-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status_cmd(args: &CommonArgs) -> ExitCode {
    let data_dir = match config::data_dir(args) {
        Ok(d) => d,
        Err(e) => return config_error(e),
    };
    match status::report(&data_dir) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ccr-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn machine_key(args: &CommonArgs) -> ExitCode {
    let Some(key) = args.api_key.as_ref().filter(|k| !k.expose().is_empty()) else {
        return config_error(
            "CCR_API_KEY is not set: set it (or pass --api-key) to the admin key the machine \
             key derives from",
        );
    };
    let id = match config::machine_id(args) {
        Ok(id) => id,
        Err(e) => return config_error(e),
    };
    println!("{}", config::machine_key(key, &id));
    ExitCode::SUCCESS
}

fn telegram_setup_cmd(args: &CommonArgs, setup_args: &telegram_setup::SetupArgs) -> ExitCode {
    let setup = match telegram_setup::Setup::from_args(args, setup_args) {
        Ok(s) => s,
        Err(e) => return config_error(e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccr-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(telegram_setup::run(&setup)) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ccr-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn install_service(args: &CommonArgs, service_args: &service::ServiceArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("ccr-agent: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = match service::plan(args, service_args, exe) {
        Ok(p) => p,
        Err(e) => return config_error(e),
    };
    match service::install(plan.platform, &plan.path, &plan.spec, &plan.worker) {
        Ok(done) => {
            for line in service::next_steps(plan.platform, &done) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ccr-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn doctor_cmd(args: &CommonArgs, doctor_args: &doctor::DoctorArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccr-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = rt.block_on(doctor::run(args, doctor_args));
    print!("{}", report.render());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
