//! Images built here without a registry: each folder of `images/` is a recipe; its hash
//! names the cached tarball, and each node imports it once as `local/<name>:dev` with the
//! label `pressdock.recipe=<hash>`.
use super::sh::{self, progress, run};
use super::{CACHE, Lab, Node};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const IMAGES: [&str; 3] = ["traefik", "varnish", "wordpress"];

pub struct Recipe {
    pub name: String,
    pub dir: PathBuf,
    pub hash: String,
}

impl Recipe {
    pub fn tag(&self) -> String {
        format!("local/{}:dev", self.name)
    }
    pub fn tarball(&self) -> PathBuf {
        Path::new(CACHE)
            .join("images")
            .join(format!("{}-{}.tar", self.name, &self.hash[..16]))
    }
    fn changes(&self) -> Result<Vec<String>> {
        let s = std::fs::read_to_string(self.dir.join("changes"))
            .with_context(|| format!("reading images/{}/changes", self.name))?;
        Ok(s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect())
    }
}

/// Hash of every file in the recipe folder (sorted by name) and of `version.sh`'s output.
pub fn recipe(lab: &Lab, name: &str) -> Result<Recipe> {
    let dir = lab.repo.join("images").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?);
    }
    let version = dir.join("version.sh");
    if version.exists() {
        h.update(run(&mut sh::cmd(
            &version.to_string_lossy(),
            [] as [&str; 0],
        ))?);
    }
    Ok(Recipe {
        name: name.to_owned(),
        dir,
        hash: hex::encode(h.finalize()),
    })
}

/// Builds the tarball unless the cache has it for this recipe hash.
pub fn ensure_built(r: &Recipe) -> Result<bool> {
    let tar = r.tarball();
    if tar.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(tar.parent().unwrap_or(Path::new(CACHE)))
        .context("creating image cache")?;
    progress(
        "images",
        format!("building {} (recipe {})…", r.tag(), &r.hash[..12]),
    );
    let t0 = std::time::Instant::now();
    let tmp = tar.with_extension("partial.tar");
    let _ = std::fs::remove_file(&tmp);
    run(&mut sh::cmd(
        &r.dir.join("build.sh").to_string_lossy(),
        [tmp.as_os_str()],
    ))
    .with_context(|| format!("building image {}", r.name))?;
    std::fs::rename(&tmp, &tar).context("moving built image into the cache")?;
    // Older tarballs of this image are stale now.
    if let Ok(rd) = std::fs::read_dir(tar.parent().unwrap_or(Path::new(CACHE))) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{}-", r.name)) && e.path() != tar {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    progress(
        "images",
        format!("built {} in {:.0}s", r.tag(), t0.elapsed().as_secs_f64()),
    );
    Ok(true)
}

/// Imports the image into the node unless it already has this recipe's build.
pub fn ensure_loaded(node: &Node, r: &Recipe) -> Result<bool> {
    let have = sh::try_out(&mut node.docker([
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"pressdock.recipe\"}}",
        &r.tag(),
    ]))
    .unwrap_or_default();
    if have.trim() == r.hash {
        return Ok(false);
    }
    let mut args = vec!["import".to_string()];
    args.push("-c".into());
    args.push(format!("LABEL pressdock.recipe={}", r.hash));
    for c in r.changes()? {
        args.push("-c".into());
        args.push(c);
    }
    args.push(r.tarball().to_string_lossy().into_owned());
    args.push(r.tag());
    run(&mut node.docker(&args))
        .with_context(|| format!("importing {} into {}", r.tag(), node.host()))?;
    Ok(true)
}
