//! Images built here without a registry: each folder of `images/` is a recipe; its hash
//! names the cached tarball, and each node imports it once as `local/<name>:dev` with the
//! label `pressdock.recipe=<hash>`.
use super::sh::{self, progress, run};
use super::{CACHE, Lab, Node};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const IMAGES: [&str; 5] = ["traefik", "varnish", "wordpress", "redis", "galera"];

pub struct Recipe {
    pub name: String,
    pub dir: PathBuf,
    /// Hash of the recipe: names the cached root filesystem.
    pub hash: String,
    /// Files and import changes laid over it (`overlay.sh`), if any.
    pub overlay: Option<Overlay>,
}

/// What `overlay.sh` produced: a folder of files, extra `--change` lines, their hash.
pub struct Overlay {
    pub dir: PathBuf,
    pub files: Vec<String>,
    pub changes: Vec<String>,
    pub hash: String,
}

impl Recipe {
    /// What the lab's stacks are deployed with (`${PD_IMAGE_…}`, `cluster::images`).
    pub fn tag(&self) -> String {
        crate::cluster::images::lab_reference(&self.name)
    }
    /// The cached root filesystem built from the recipe.
    pub fn tarball(&self) -> PathBuf {
        Path::new(CACHE)
            .join("images")
            .join(format!("{}-{}.tar", self.name, &self.hash[..16]))
    }
    /// What is imported: the tarball, or a copy with the overlay's files appended.
    pub fn import_tarball(&self) -> PathBuf {
        match &self.overlay {
            None => self.tarball(),
            Some(o) => Path::new(CACHE).join("images").join(format!(
                "{}-{}+{}.tar",
                self.name,
                &self.hash[..16],
                &o.hash[..12]
            )),
        }
    }
    /// The `pressdock.recipe` label of the imported image.
    pub fn label(&self) -> String {
        match &self.overlay {
            None => self.hash.clone(),
            Some(o) => format!("{}+{}", self.hash, o.hash),
        }
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
    files.retain(|f| f.file_name().is_none_or(|n| n != "overlay.sh"));
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
    let overlay = overlay(name, &dir)?;
    Ok(Recipe {
        name: name.to_owned(),
        dir,
        hash: hex::encode(h.finalize()),
        overlay,
    })
}

fn overlay(name: &str, dir: &Path) -> Result<Option<Overlay>> {
    let script = dir.join("overlay.sh");
    if !script.exists() {
        return Ok(None);
    }
    let out = Path::new(CACHE).join("overlay").join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).context("creating overlay folder")?;
    let stdout = run(&mut sh::cmd(&script.to_string_lossy(), [out.as_os_str()]))
        .with_context(|| format!("running images/{name}/overlay.sh"))?;
    let changes: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let mut files = Vec::new();
    fn walk(base: &Path, d: &Path, files: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, files);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    files.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    walk(&out, &out, &mut files);
    files.sort();
    if files.is_empty() && changes.is_empty() {
        return Ok(None);
    }
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.as_bytes());
        h.update(std::fs::read(out.join(f)).with_context(|| format!("reading overlay {f}"))?);
    }
    for c in &changes {
        h.update(c.as_bytes());
    }
    Ok(Some(Overlay {
        dir: out,
        files,
        changes,
        hash: hex::encode(h.finalize()),
    }))
}

/// The import tarball with the overlay appended (a copy of the cached tarball).
pub fn ensure_overlaid(r: &Recipe) -> Result<()> {
    let Some(o) = &r.overlay else {
        return Ok(());
    };
    let dest = r.import_tarball();
    if dest.exists() {
        return Ok(());
    }
    let tmp = dest.with_extension("partial.tar");
    std::fs::copy(r.tarball(), &tmp).context("copying the cached image for its overlay")?;
    let mut args = vec![
        "-C".to_string(),
        o.dir.to_string_lossy().into_owned(),
        "--append".into(),
        "-f".into(),
        tmp.to_string_lossy().into_owned(),
    ];
    args.extend(o.files.iter().cloned());
    run(&mut sh::cmd("tar", &args)).context("appending the overlay")?;
    std::fs::rename(&tmp, &dest).context("moving the overlaid image into the cache")?;
    // Older overlays of this image are stale now.
    let prefix = format!("{}-{}+", r.name, &r.hash[..16]);
    if let Ok(rd) = std::fs::read_dir(dest.parent().unwrap_or(Path::new(CACHE))) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && e.path() != dest {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    progress(
        "images",
        format!("{}: overlay {} added", r.tag(), o.files.join(", ")),
    );
    Ok(())
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
            if n.starts_with(&format!("{}-", r.name))
                && !n.starts_with(&format!("{}-{}", r.name, &r.hash[..16]))
            {
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
    if have.trim() == r.label() {
        return Ok(false);
    }
    // The node's docker data is a fixed-size tmpfs: an older build of this image must go
    // before the new one comes in, or a few rebuilds (a new agent binary each) fill it.
    // Untagging fails harmlessly while a container still uses it; the prune below then
    // removes it once the swarm has replaced that container.
    if !have.trim().is_empty() {
        let _ = sh::try_out(&mut node.docker(["image", "rm", &r.tag()]));
    }
    let mut args = vec!["import".to_string()];
    args.push("-c".into());
    args.push(format!("LABEL pressdock.recipe={}", r.label()));
    let extra = r.overlay.iter().flat_map(|o| o.changes.iter().cloned());
    for c in r.changes()?.into_iter().chain(extra) {
        args.push("-c".into());
        args.push(c);
    }
    args.push(r.import_tarball().to_string_lossy().into_owned());
    args.push(r.tag());
    run(&mut node.docker(&args))
        .with_context(|| format!("importing {} into {}", r.tag(), node.host()))?;
    // Earlier builds left untagged by this import, unless a container still uses them.
    let _ = sh::try_out(&mut node.docker(["image", "prune", "-f"]));
    Ok(true)
}
