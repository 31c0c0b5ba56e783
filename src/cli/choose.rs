//! `--backend auto` by the cost model T = N/P·S + D, and `microbatch calibrate`, which measures
//! S and D on this machine.
//!
//! For each candidate — the CPU backend (P = its threads) and the GPU a profile names (P = its
//! workgroups) — T is predicted with D including the backend's start-up (for the GPU: Vulkan,
//! the device, the pipelines), and the smaller wins. The GPU is probed (a wgpu instance
//! created, adapters enumerated) only when it is predicted to win: small inputs never start
//! Vulkan. Without a profile, built-in figures stand in, chosen so that the CPU is picked unless
//! the input is large enough to pay a GPU's start-up many times over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use microbatch::model::{CostModel, Observation};

/// One backend's fitted model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Fit {
    /// Parallel processors the fit is for.
    pub p: f64,
    /// Seconds per element per processor.
    pub s: f64,
    /// Fixed seconds per run, start-up included.
    pub d: f64,
}

impl Fit {
    fn predict(&self, n: f64) -> f64 {
        n / self.p * self.s + self.d
    }
}

/// The GPU a profile was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GpuFit {
    pub adapter: String,
    /// (Not flattened: serde_json's arbitrary-precision numbers do not survive `flatten`.)
    pub fit: Fit,
    /// Of `d`: bringing the backend up (instance, device, pipelines).
    pub startup_s: f64,
}

/// What `calibrate` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub format: String,
    pub version: u32,
    pub created: String,
    pub cpu: Fit,
    pub gpu: Option<GpuFit>,
}

const PROFILE_FORMAT: &str = "microbatch-profile";

/// Where the profile lives: `$MICROBATCH_PROFILE`, else `$XDG_CACHE_HOME/microbatch/profile.json`
/// or `~/.cache/microbatch/profile.json`.
pub(crate) fn profile_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MICROBATCH_PROFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(cache.join("microbatch").join("profile.json"))
}

fn load(path: &Path) -> Result<Profile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let p: Profile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a calibration profile", path.display()))?;
    anyhow::ensure!(
        p.format == PROFILE_FORMAT && p.version == 1,
        "{}: a profile of format {:?} version {}, not {PROFILE_FORMAT:?} version 1 (run `microbatch calibrate` again)",
        path.display(),
        p.format,
        p.version
    );
    Ok(p)
}

/// The built-in stand-ins: a CPU thread at 5 GB/s of f32 (this project's 2-core machine
/// measures 13), a GPU streaming at 30 GB/s over 1024 workgroups (an H100/H200 through wgpu)
/// after 0.3 s of start-up (0.27 s measured on the H200 machine).
fn builtin(threads: usize) -> Profile {
    let per_thread = 5e9 / 4.0;
    Profile {
        format: PROFILE_FORMAT.into(),
        version: 1,
        created: "built-in".into(),
        cpu: Fit {
            p: threads as f64,
            s: 1.0 / per_thread,
            d: 0.001,
        },
        gpu: Some(GpuFit {
            adapter: String::new(),
            fit: Fit {
                p: 1024.0,
                s: 1024.0 / (30e9 / 4.0),
                d: 0.3,
            },
            startup_s: 0.3,
        }),
    }
}

/// What `auto` decided and why.
pub(crate) struct Choice {
    /// Take the GPU (the named adapter; empty: any hardware GPU).
    pub gpu: Option<String>,
    pub json: Value,
    pub line: String,
}

/// Decides for `n` elements (`None`: unknown, e.g. stdin).
pub(crate) fn choose(n: Option<u64>) -> Result<Choice> {
    let threads = rayon::current_num_threads();
    let (profile, source) = match profile_path().filter(|p| p.exists()) {
        Some(p) => (load(&p)?, p.display().to_string()),
        None => (
            builtin(threads),
            "built-in (run `microbatch calibrate`)".into(),
        ),
    };
    let Some(n) = n else {
        return Ok(Choice {
            gpu: None,
            json: json!({"backend": "cpu", "reason": "input size unknown (a stream): the CPU, which needs no start-up", "profile": source}),
            line: "cpu (input size unknown: the CPU needs no start-up)".into(),
        });
    };
    let t_cpu = profile.cpu.predict(n as f64);
    let t_gpu = profile.gpu.as_ref().map(|g| g.fit.predict(n as f64));
    let gpu_wins = t_gpu.is_some_and(|g| g < t_cpu);
    let json = json!({
        "backend": if gpu_wins { "gpu" } else { "cpu" },
        "elements": n,
        "predicted_s": {"cpu": t_cpu, "gpu": t_gpu},
        "profile": source,
    });
    let line = format!(
        "{} (predicted: cpu {}{}; profile {source})",
        if gpu_wins { "gpu" } else { "cpu" },
        secs(t_cpu),
        t_gpu.map_or(String::new(), |g| format!(", gpu {}", secs(g)))
    );
    Ok(Choice {
        gpu: gpu_wins.then(|| {
            profile
                .gpu
                .as_ref()
                .map(|g| g.adapter.clone())
                .unwrap_or_default()
        }),
        json,
        line,
    })
}

fn secs(t: f64) -> String {
    if t < 1.0 {
        format!("{:.1} ms", t * 1e3)
    } else {
        format!("{t:.2} s")
    }
}

/// `microbatch calibrate`: measures the CPU backend and (if there is one, or `adapter` names
/// one) a GPU, fits S and D, writes the profile.
pub(crate) fn calibrate(adapter: Option<String>, out: Option<PathBuf>) -> Result<()> {
    use microbatch::{BackendChoice, Engine, EngineConfig};
    let sizes = [1u64 << 20, 1 << 22, 1 << 24];
    let data: Vec<f32> = (0..*sizes.last().expect("sizes"))
        .map(|i| (i % 1000) as f32)
        .collect();
    let measure = |engine: &mut Engine, p: f64| -> Result<Fit> {
        let mut obs = Vec::new();
        for &n in &sizes {
            let slice = &data[..n as usize];
            engine.reduce(slice)?; // warm-up
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                engine.reduce(slice)?;
                best = best.min(t.elapsed());
            }
            obs.push(Observation {
                n: n as f64,
                p,
                seconds: best.as_secs_f64(),
            });
        }
        let m = CostModel::fit(&obs).context("fitting the measurements")?;
        Ok(Fit {
            p,
            s: m.s.max(0.0),
            d: m.d.max(0.0),
        })
    };
    let threads = rayon::current_num_threads();
    let mut cpu_engine = Engine::new(&EngineConfig {
        backend: BackendChoice::Cpu,
        ..EngineConfig::default()
    })?;
    let mut cpu = measure(&mut cpu_engine, threads as f64)?;
    // The CPU's start-up: the thread pool, already up here; a fresh process pays ~1 ms.
    cpu.d += 0.001;
    eprintln!(
        "cpu: {threads} threads, {:.2} GB/s, D {:.3} ms",
        4.0 * threads as f64 / cpu.s / 1e9,
        cpu.d * 1e3
    );
    let t = Instant::now();
    let gpu_engine = Engine::new(&EngineConfig {
        backend: if adapter.is_some() {
            BackendChoice::Gpu
        } else {
            BackendChoice::Auto
        },
        adapter: adapter.clone(),
        ..EngineConfig::default()
    });
    let startup = t.elapsed().as_secs_f64();
    let gpu = match gpu_engine {
        Ok(mut e) if e.backend().kind == microbatch::BackendKind::Gpu => {
            let info = e.backend().clone();
            let mut fit = measure(&mut e, f64::from(info.workgroups))?;
            fit.d += startup;
            eprintln!(
                "gpu: {} (P = {}), {:.2} GB/s, D {:.1} ms of which start-up {:.1} ms",
                info.adapter,
                info.workgroups,
                4.0 * fit.p / fit.s / 1e9,
                fit.d * 1e3,
                startup * 1e3
            );
            Some(GpuFit {
                adapter: info.adapter,
                fit,
                startup_s: startup,
            })
        }
        Ok(e) => {
            eprintln!(
                "gpu: none here that auto would take ({}); auto will take the CPU",
                e.notice()
                    .unwrap_or("no hardware GPU: `--adapter NAME` calibrates a software one")
            );
            None
        }
        Err(e) => {
            eprintln!("gpu: none ({e})");
            None
        }
    };
    let profile = Profile {
        format: PROFILE_FORMAT.into(),
        version: 1,
        created: format!(
            "unix {}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
        cpu,
        gpu,
    };
    let path = out
        .or_else(profile_path)
        .context("no cache directory: pass --output FILE")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&profile)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}
