//! One subcommand, run to its end: `main.rs` parses the command line and calls [`run`], which
//! dispatches, prints what the subcommand has to say and returns every failure as one
//! [`AppError`] — the only thing `main.rs` turns into an exit code.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::anyhow;

use crate::cli::{Cli, Command, CommonArgs, TelegramCommand};
use crate::settings::{self, Config, ConfigError, RawSettings};
use crate::setup::{claude_settings, doctor, service, telegram};
use crate::{daemon, hooks, runtime};

/// How a subcommand failed; each kind has its own exit code.
#[derive(Debug)]
pub enum AppError {
    /// A setting is missing or malformed (exit code 2); its message names it and the fix.
    Config(ConfigError),
    /// The subcommand could not do its job (exit code 1).
    Failed(anyhow::Error),
    /// The daemon stopped on an error (exit code 1); logging is set up, so it goes to the log.
    Daemon(anyhow::Error),
    /// `doctor` found problems (exit code 1); its report, printed already, says which.
    ChecksFailed,
}

impl From<ConfigError> for AppError {
    fn from(e: ConfigError) -> Self {
        AppError::Config(e)
    }
}

/// Runs the subcommand `cli` names (the daemon when it names none).
pub fn run(cli: Cli) -> Result<(), AppError> {
    let common = &cli.common;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_daemon(common),
        Command::Hook { event } => {
            // A hook never fails Claude: whatever happens, it exits 0.
            hooks::run(&common.raw(), event.into());
            Ok(())
        }
        Command::InstallHooks {
            settings,
            permission_timeout,
        } => install_hooks(common, settings, permission_timeout),
        Command::Status => status(common),
        Command::MachineKey => machine_key(&common.raw()),
        Command::Telegram {
            command: TelegramCommand::Setup(args),
        } => telegram_setup(&common.raw(), &args.inputs()),
        Command::InstallService(args) => install_service(&common.raw(), &args.options()),
        Command::Doctor(args) => run_doctor(&common.raw(), &args.options()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    runtime::build().map_err(|e| AppError::Failed(anyhow!("cannot start the async runtime: {e}")))
}

fn current_exe() -> Result<PathBuf, AppError> {
    std::env::current_exe()
        .map_err(|e| AppError::Failed(anyhow!("cannot find this program's path: {e}")))
}

fn run_daemon(common: &CommonArgs) -> Result<(), AppError> {
    let config = Config::from_args_or_saved(&common.raw())?;
    ccr_native::init_tracing(
        std::io::stderr,
        Some(std::io::stderr().is_terminal()),
        "info",
    );
    let rt = runtime()?;
    rt.block_on(async {
        let shutdown = ccr_native::shutdown_signal()?;
        let shutdown = async {
            match shutdown.await {
                ccr_native::Signal::Terminate => tracing::info!("SIGTERM received"),
                ccr_native::Signal::Interrupt => tracing::info!("SIGINT received"),
            }
        };
        daemon::run(config, shutdown).await
    })
    .map_err(AppError::Daemon)
}

fn install_hooks(
    common: &CommonArgs,
    path: Option<PathBuf>,
    permission_timeout: u64,
) -> Result<(), AppError> {
    let Some(path) = path.or_else(claude_settings::default_settings_path) else {
        return Err(
            ConfigError("HOME is not set: pass --settings <path to settings.json>".into()).into(),
        );
    };
    let exe = current_exe()?;
    let r = claude_settings::install(&path, &exe, common.data_dir.as_deref(), permission_timeout)
        .map_err(AppError::Failed)?;
    if !r.changed {
        println!("{}: the hooks are already installed", r.path.display());
        return Ok(());
    }
    if let Some(b) = &r.backup {
        println!("backed up the previous settings to {}", b.display());
    }
    println!(
        "installed the SessionStart, Stop, StopFailure, Notification, SessionEnd, PermissionRequest, PostToolUse, PermissionDenied and UserPromptSubmit hooks in {}",
        r.path.display()
    );
    Ok(())
}

fn status(common: &CommonArgs) -> Result<(), AppError> {
    let data_dir = settings::data_dir(&common.raw())?;
    let text = daemon::status::report(&data_dir).map_err(AppError::Failed)?;
    print!("{text}");
    Ok(())
}

fn machine_key(raw: &RawSettings) -> Result<(), AppError> {
    let Some(key) = raw.api_key.as_ref().filter(|k| !k.expose().is_empty()) else {
        return Err(ConfigError(
            "CCR_API_KEY is not set: set it (or pass --api-key) to the admin key the machine \
             key derives from"
                .into(),
        )
        .into());
    };
    let id = settings::machine_id(raw)?;
    println!("{}", settings::machine_key(key, &id));
    Ok(())
}

fn telegram_setup(raw: &RawSettings, inputs: &telegram::Inputs) -> Result<(), AppError> {
    let setup = telegram::Setup::from_args(raw, inputs)?;
    let rt = runtime()?;
    let lines = rt
        .block_on(telegram::run(&setup))
        .map_err(|e| AppError::Failed(e.into()))?;
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn install_service(raw: &RawSettings, options: &service::Options) -> Result<(), AppError> {
    let exe = current_exe()?;
    let plan = service::plan(raw, options, exe)?;
    // `/new`'s settings given here are checked before anything is written, and saved with
    // the Worker settings for the service (which starts with no flags).
    let given =
        !raw.projects.is_empty() || raw.new_session_command.is_some() || raw.tmux_socket.is_some();
    let launch = if given {
        Some(settings::saved_launch(raw, &plan.spec.data_dir)?)
    } else {
        None
    };
    let done = service::install(plan.platform, &plan.path, &plan.spec, &plan.worker)
        .map_err(AppError::Failed)?;
    if let Some(launch) = &launch {
        settings::write_settings(&plan.spec.data_dir, &plan.worker, Some(launch)).map_err(|e| {
            AppError::Failed(anyhow!("writing {}: {e}", done.settings_path.display()))
        })?;
        println!(
            "saved /new's {} project(s) in {}",
            launch.projects.len(),
            done.settings_path.display()
        );
    }
    for line in service::next_steps(plan.platform, &done) {
        println!("{line}");
    }
    Ok(())
}

fn run_doctor(raw: &RawSettings, options: &doctor::Options) -> Result<(), AppError> {
    let rt = runtime()?;
    let report = rt.block_on(doctor::run(raw, options));
    print!("{}", report.render());
    if report.ok() {
        Ok(())
    } else {
        Err(AppError::ChecksFailed)
    }
}
