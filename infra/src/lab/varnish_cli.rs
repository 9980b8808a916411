//! The Varnish CLI (`varnishd -T` with `-S`) for `lab up`, which reloads the VCL on every
//! instance when the files change, and for the lab tests.
//!
//! The protocol is written once, in the drivers (`backends::varnish::VarnishCli`: the
//! challenge, framing, quoting and timeouts); this is a blocking face on it, as the lab
//! code is synchronous.
use std::path::Path;

use anyhow::{Context, Result, bail};
use backends::varnish::VarnishCli;

pub struct Cli {
    runtime: tokio::runtime::Runtime,
    cli: VarnishCli,
}

impl Cli {
    /// Connects and answers the challenge with the secret file's bytes.
    pub fn connect(addr: &str, secret_file: &Path) -> Result<Self> {
        let secret = std::fs::read(secret_file)
            .with_context(|| format!("reading {}", secret_file.display()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the Varnish CLI")?;
        let cli = runtime
            .block_on(VarnishCli::connect(addr, &secret))
            .with_context(|| format!("connecting to varnish at {addr}"))?;
        Ok(Self { runtime, cli })
    }

    /// Sends one command line (a name and plain arguments separated by spaces); returns
    /// the status code and body.
    pub fn call(&mut self, line: &str) -> Result<(u32, String)> {
        let mut words = line.split_whitespace();
        let name = words.next().context("an empty CLI command")?;
        let args: Vec<&str> = words.collect();
        let response = self
            .runtime
            .block_on(self.cli.command(name, &args))
            .with_context(|| format!("varnish `{line}`"))?;
        Ok((u32::from(response.status), response.body))
    }

    /// Fails unless the command answers 200.
    pub fn ok(&mut self, line: &str) -> Result<String> {
        let (code, body) = self.call(line)?;
        if code != 200 {
            bail!("varnish `{line}`: {code} {body}");
        }
        Ok(body)
    }
}
