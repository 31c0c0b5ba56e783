//! The `microbatch` command: thin glue over the library (see `src/cli/`).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_wayland_probe();
    cli::keep_freed_memory();
    match cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`microbatch run … | head`) is not a failure.
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("microbatch: error: {err:#}");
            if let Some(hint) = err
                .chain()
                .find_map(|e| e.downcast_ref::<microbatch::Error>())
                .and_then(cli::hint)
            {
                eprintln!("microbatch: hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Mesa's Vulkan drivers probe for a Wayland display, and libwayland prints an "error:" line when
/// `XDG_RUNTIME_DIR` is unset (headless servers, containers, CI). Pointing it at the temporary
/// directory makes the probe fail quietly; nothing here wants a display.
fn quiet_wayland_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: called first thing in main, before any thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}
