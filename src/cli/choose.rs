//! `--backend auto` by the cost model T = N/P·S + D, and `microbatch calibrate`, which measures
//! S and D on this machine.
//!
//! For each candidate — the CPU backend (P = its threads) and every GPU adapter the profile
//! holds (each with its own P, S and D) — T is predicted with D including the backend's
//! start-up (for a GPU: Vulkan, the device, the pipelines), and the smallest wins. The GPU is probed (a wgpu instance
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

/// What `calibrate` writes (version 2: every GPU adapter measured; version 1 held one, in
/// `gpu`, and is still read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub format: String,
    pub version: u32,
    pub created: String,
    pub cpu: Fit,
    #[serde(default)]
    pub gpus: Vec<GpuFit>,
    /// Version 1's single GPU.
    #[serde(default, skip_serializing)]
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
    let mut p: Profile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a calibration profile", path.display()))?;
    anyhow::ensure!(
        p.format == PROFILE_FORMAT && (1..=2).contains(&p.version),
        "{}: a profile of format {:?} version {}, not {PROFILE_FORMAT:?} version 1 or 2 (run `microbatch calibrate` again)",
        path.display(),
        p.format,
        p.version
    );
    p.gpus.extend(p.gpu.take());
    for g in &p.gpus {
        anyhow::ensure!(
            g.fit.p > 0.0 && g.fit.s >= 0.0 && g.fit.d >= 0.0,
            "{}: GPU {:?} has an impossible fit (P, S and D must be positive)",
            path.display(),
            g.adapter
        );
    }
    anyhow::ensure!(
        p.cpu.p > 0.0 && p.cpu.s >= 0.0 && p.cpu.d >= 0.0,
        "{}: the CPU has an impossible fit (P, S and D must be positive)",
        path.display()
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
        gpus: vec![GpuFit {
            adapter: String::new(),
            fit: Fit {
                p: 1024.0,
                s: 1024.0 / (30e9 / 4.0),
                d: 0.3,
            },
            startup_s: 0.3,
        }],
        gpu: None,
    }
}

/// What `auto` decided and why.
pub(crate) struct Choice {
    /// Take the GPU (the named adapter; empty: any hardware GPU).
    pub gpu: Option<String>,
    pub json: Value,
    pub line: String,
}

/// Decides for `n` f32 values (`None`: unknown, e.g. stdin).
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
    if n == 0 {
        return Ok(Choice {
            gpu: None,
            json: json!({"backend": "cpu", "elements": 0, "reason": "no f32 values: f64, integer and text inputs are reduced by the CPU kernels on either backend", "profile": source}),
            line: "cpu (no f32 values: f64, integers and text are reduced by the CPU kernels on either backend)".into(),
        });
    }
    let t_cpu = profile.cpu.predict(n as f64);
    // Every GPU candidate's prediction; the cheapest one competes with the CPU.
    let gpus: Vec<(&GpuFit, f64)> = profile
        .gpus
        .iter()
        .map(|g| (g, g.fit.predict(n as f64)))
        .collect();
    let best = gpus
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|&(g, t)| (g, t));
    let gpu_wins = best.is_some_and(|(_, t)| t < t_cpu);
    let name = |g: &GpuFit| {
        if g.adapter.is_empty() {
            "any hardware GPU".to_string()
        } else {
            g.adapter.clone()
        }
    };
    let json = json!({
        "backend": if gpu_wins { "gpu" } else { "cpu" },
        "adapter": best.filter(|_| gpu_wins).map(|(g, _)| name(g)),
        "elements": n,
        "predicted_s": {"cpu": t_cpu, "gpu": best.map(|(_, t)| t)},
        "gpus": gpus.iter().map(|(g, t)| json!({"adapter": name(g), "p": g.fit.p, "predicted_s": t})).collect::<Vec<_>>(),
        "profile": source,
    });
    let mut predicted = vec![format!("cpu {}", secs(t_cpu))];
    for (g, t) in &gpus {
        predicted.push(if gpus.len() == 1 {
            format!("gpu {}", secs(*t))
        } else {
            format!("{} {}", name(g), secs(*t))
        });
    }
    let line = format!(
        "{} (predicted: {}; profile {source})",
        match best {
            Some((g, _)) if gpu_wins && gpus.len() > 1 => format!("gpu ({})", name(g)),
            _ if gpu_wins => "gpu".to_string(),
            _ => "cpu".to_string(),
        },
        predicted.join(", ")
    );
    Ok(Choice {
        gpu: best.filter(|_| gpu_wins).map(|(g, _)| g.adapter.clone()),
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
    // The adapters to measure: the one named, else every hardware GPU (what `auto` may take).
    let names: Vec<Option<String>> = match &adapter {
        Some(a) => vec![Some(a.clone())],
        None => {
            let hardware: Vec<Option<String>> = microbatch::list_adapters()
                .into_iter()
                .filter(|a| a.device_type != "Cpu")
                .map(|a| Some(a.name))
                .collect();
            if hardware.is_empty() {
                vec![None]
            } else {
                hardware
            }
        }
    };
    let mut gpus = Vec::new();
    for name in names {
        let t = Instant::now();
        let gpu_engine = Engine::new(&EngineConfig {
            backend: if name.is_some() {
                BackendChoice::Gpu
            } else {
                BackendChoice::Auto
            },
            adapter: name.clone(),
            ..EngineConfig::default()
        });
        let startup = t.elapsed().as_secs_f64();
        match gpu_engine {
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
                gpus.push(GpuFit {
                    adapter: info.adapter,
                    fit,
                    startup_s: startup,
                });
            }
            Ok(e) => {
                eprintln!(
                    "gpu: none here that auto would take ({}); auto will take the CPU",
                    e.notice()
                        .unwrap_or("no hardware GPU: `--adapter NAME` calibrates a software one")
                );
            }
            Err(e) => {
                eprintln!(
                    "gpu: {} not measured ({e})",
                    name.as_deref().unwrap_or("none")
                );
            }
        }
    }
    let profile = Profile {
        format: PROFILE_FORMAT.into(),
        version: 2,
        created: format!(
            "unix {}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
        cpu,
        gpus,
        gpu: None,
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
